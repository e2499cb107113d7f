//! Frame codec: round trips and typed errors for malformed, truncated, oversized and
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! wrong-version frames; property tests that the decoder never panics.

use proptest::prelude::*;
use pyxis_protocol::*;

fn sample_node() -> NodeInfo {
    NodeInfo {
        name: "gpu-node-1".into(),
        hostname: "gpu-node-1.example".into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        cpu_model: "AMD EPYC 9654".into(),
        cpu_cores: 192,
        memory_bytes: 1 << 40,
        agent_version: "0.1.0".into(),
        accelerators: vec![Accelerator {
            index: 0,
            vendor: Vendor::Nvidia,
            model: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-1234".into(),
            memory_bytes: 80 << 30,
            hardware_class: "H100-80GB".into(),
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: true,
            details: DeviceDetails {
                pci_bus_id: Some("0000:17:00.0".into()),
                numa_node: Some(0),
                driver_version: Some("550.54.15".into()),
                compute_api_version: Some("12.4".into()),
                architecture: Some("9.0".into()),
                max_sm_clock_mhz: Some(1980),
                max_memory_clock_mhz: Some(2619),
                ecc_enabled: Some(true),
                mig: Some(MigConfig {
                    enabled: true,
                    pending_enabled: true,
                    instances: vec![MigInstance {
                        uuid: "MIG-1".into(),
                        profile: "1g.10gb".into(),
                        memory_bytes: 10 << 30,
                        gpu_instance_id: 9,
                        compute_instance_id: 0,
                        hardware_class: "H100-80GB-MIG-1g.10gb".into(),
                    }],
                }),
                links: vec![PeerLink {
                    peer: 1,
                    kind: Interconnect::NvLink,
                    lanes: 18,
                }],
            },
        }],
        runtimes: vec!["vllm".into(), "llama-cpp".into()],
    }
}

fn sample_capacity(seq: u64) -> CapacityReport {
    CapacityReport {
        seq,
        sent_at_unix_ms: 1_700_000_000_000,
        memory_available_bytes: 1 << 39,
        devices: vec![DeviceUsage {
            uuid: "GPU-1234".into(),
            memory_used_bytes: Some(1 << 30),
            utilization_percent: Some(42),
            health: Health::Degraded,
            health_reason: "XID 13".into(),
            temperature_celsius: Some(61),
            power_watts: Some(350),
            power_limit_watts: Some(700),
            telemetry: DeviceTelemetry {
                sm_clock_mhz: Some(1755),
                memory_clock_mhz: Some(2619),
                throttle_reasons: Some(vec!["sw_power_cap".into()]),
                ecc: Some(EccCounts {
                    volatile_corrected: 3,
                    remapped_rows: Some(1),
                    remap_pending: Some(false),
                    ..Default::default()
                }),
                xid_count: Some(1),
                last_xid: Some(13),
            },
        }],
    }
}

fn every_agent_message() -> Vec<AgentMessage> {
    vec![
        AgentMessage::Hello(Hello {
            versions: SUPPORTED_VERSIONS,
            agent_version: "0.1.0".into(),
            node_name: "n1".into(),
        }),
        AgentMessage::Enroll(EnrollRequest {
            token: "abcdef.0123456789abcdef".into(),
            node_name: "n1".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        }),
        AgentMessage::Register(Registration {
            node: sample_node(),
            capacity: sample_capacity(0),
        }),
        AgentMessage::Capacity(sample_capacity(7)),
        AgentMessage::RuntimeStatus(RuntimeStatusReport {
            seq: 3,
            replicas: vec![ReplicaStatus {
                name: "qwen-7b-0".into(),
                phase: ReplicaPhase::CrashLoop,
                reason: "exit code 1".into(),
                runtime_version: Some("0.6.0".into()),
                endpoint: None,
                deployment: "qwen-7b".into(),
                tenant: "research".into(),
                runtime_kind: "vllm".into(),
                gpus: vec!["GPU-1".into()],
                pid: Some(4242),
                restarts: 3,
                last_exit: Some("exit code 1".into()),
                log_tail: vec!["CUDA out of memory".into()],
                ready_after_ms: None,
                metrics: Some(RuntimeMetrics {
                    requests_running: Some(2.0),
                    kv_cache_usage_ratio: Some(0.25),
                    ..Default::default()
                }),
            }],
        }),
        AgentMessage::Ack(Ack {
            of: AckOf::DesiredState(4),
        }),
        AgentMessage::Error(ErrorMessage {
            code: ErrorCode::BadRequest,
            message: "no".into(),
        }),
    ]
}

fn every_coordinator_message() -> Vec<CoordinatorMessage> {
    vec![
        CoordinatorMessage::HelloAck(HelloAck {
            version: 1,
            coordinator_version: "0.1.0".into(),
        }),
        CoordinatorMessage::Enrolled(EnrollResponse {
            certificate_pem: "c".into(),
            ca_pem: "ca".into(),
        }),
        CoordinatorMessage::Registered(RegisterAck {
            node_name: "n1".into(),
            report_interval_ms: 1000,
        }),
        CoordinatorMessage::DesiredState(DesiredState {
            generation: 9,
            replicas: vec![ReplicaSpec {
                name: "r".into(),
                deployment: "d".into(),
                tenant: "t".into(),
                model_name: "m".into(),
                model_version: "v".into(),
                model_source: "/models/m".into(),
                runtime_kind: "vllm".into(),
                runtime_args: vec!["--max-model-len".into(), "8192".into()],
                gpus: vec!["GPU-1".into(), "GPU-2".into()],
                env: vec![("VLLM_LOGGING_LEVEL".into(), "DEBUG".into())],
                readiness_timeout_ms: 600_000,
                custom: Some(CustomRuntime {
                    command: vec!["my-server".into(), "--port".into(), "{port}".into()],
                    health_path: "/health".into(),
                    metrics_path: Some("/metrics".into()),
                    version_path: None,
                    openai_path: "/v1".into(),
                }),
            }],
        }),
        CoordinatorMessage::Ack(Ack { of: AckOf::Capacity(7) }),
        CoordinatorMessage::Error(ErrorMessage {
            code: ErrorCode::Revoked,
            message: "revoked".into(),
        }),
    ]
}

#[test]
fn every_message_round_trips() {
    for message in every_agent_message() {
        let frame = encode_frame(1, &message, MAX_FRAME_BYTES).unwrap();
        let (version, back): (u16, AgentMessage) = decode_frame(&frame, Some(1), MAX_FRAME_BYTES).unwrap();
        assert_eq!(version, 1);
        assert_eq!(back, message);
    }
    for message in every_coordinator_message() {
        let frame = encode_frame(1, &message, MAX_FRAME_BYTES).unwrap();
        let (_, back): (u16, CoordinatorMessage) = decode_frame(&frame, Some(1), MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, message);
    }
}

#[test]
fn truncated_frames_are_typed_errors() {
    let frame = encode_frame(1, &every_agent_message()[2], MAX_FRAME_BYTES).unwrap();
    for cut in 0..frame.len() {
        let err = decode_frame::<AgentMessage>(&frame[..cut], Some(1), MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "cut at {cut}: {err:?}");
    }
}

#[test]
fn oversized_frames_are_refused_from_the_header() {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[..4].copy_from_slice(&(MAX_FRAME_BYTES + 1).to_be_bytes());
    assert_eq!(
        FrameHeader::parse(&header, MAX_FRAME_BYTES),
        Err(FrameError::Oversized {
            len: u64::from(MAX_FRAME_BYTES) + 1,
            max: MAX_FRAME_BYTES
        })
    );
    // And on the encode side.
    let big = AgentMessage::Error(ErrorMessage {
        code: ErrorCode::Internal,
        message: "x".repeat(2000),
    });
    assert!(matches!(encode_frame(1, &big, 1000), Err(FrameError::Oversized { .. })));
}

#[test]
fn wrong_version_frames_are_typed_errors() {
    let frame = encode_frame(2, &every_agent_message()[3], MAX_FRAME_BYTES).unwrap();
    let err = decode_frame::<AgentMessage>(&frame, Some(1), MAX_FRAME_BYTES).unwrap_err();
    assert_eq!(err, FrameError::WrongVersion { got: 2, expected: 1 });
    assert_eq!(err.to_string(), "frame is protocol version 2, but version 1 was agreed");
}

#[test]
fn malformed_payloads_are_typed_errors() {
    // Variant index 200 does not exist.
    let mut frame = vec![0, 0, 0, 3, 0, 1, 200];
    let err = decode_frame::<AgentMessage>(&frame, Some(1), MAX_FRAME_BYTES).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
    // A valid message followed by junk inside the declared length.
    frame = encode_frame(1, &every_agent_message()[5], MAX_FRAME_BYTES).unwrap();
    frame.push(0xff);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    let err = decode_frame::<AgentMessage>(&frame, Some(1), MAX_FRAME_BYTES).unwrap_err();
    assert_eq!(err, FrameError::TrailingBytes(1));
    // A length too short to hold the version.
    let err = decode_frame::<AgentMessage>(&[0, 0, 0, 1, 0, 1], Some(1), MAX_FRAME_BYTES).unwrap_err();
    assert_eq!(err, FrameError::LengthTooSmall { len: 1 });
}

#[test]
fn hello_is_readable_whatever_version_the_frame_claims() {
    let hello = every_agent_message().remove(0);
    let frame = encode_frame(7, &hello, MAX_FRAME_BYTES).unwrap();
    let (version, back): (u16, AgentMessage) = decode_frame(&frame, None, MAX_FRAME_BYTES).unwrap();
    assert_eq!((version, back), (7, hello));
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame::<AgentMessage>(&bytes, Some(1), MAX_FRAME_BYTES);
        let _ = decode_frame::<CoordinatorMessage>(&bytes, None, MAX_FRAME_BYTES);
        let _ = decode_payload::<AgentMessage>(&bytes);
        let _ = decode_payload::<CoordinatorMessage>(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_mutated_frames(
        which in 0usize..7,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut frame = encode_frame(1, &every_agent_message()[which], MAX_FRAME_BYTES).unwrap();
        for (at, value) in flips {
            let i = at % frame.len();
            frame[i] = value;
        }
        let _ = decode_frame::<AgentMessage>(&frame, Some(1), MAX_FRAME_BYTES);
    }

    #[test]
    fn capacity_reports_round_trip(
        seq in any::<u64>(),
        sent in any::<u64>(),
        mem in any::<u64>(),
        devices in proptest::collection::vec(
            (".{0,40}", proptest::option::of(any::<u64>()), proptest::option::of(0u8..=100), 0u8..3),
            0..16,
        ),
    ) {
        let report = CapacityReport {
            seq,
            sent_at_unix_ms: sent,
            memory_available_bytes: mem,
            devices: devices.into_iter().map(|(uuid, used, util, h)| DeviceUsage {
                uuid,
                memory_used_bytes: used,
                utilization_percent: util,
                health: [Health::Healthy, Health::Degraded, Health::Unhealthy][h as usize],
                health_reason: String::new(),
                temperature_celsius: None,
                power_watts: util.map(u32::from),
                power_limit_watts: None,
                telemetry: DeviceTelemetry { xid_count: used, ..Default::default() },
            }).collect(),
        };
        let message = AgentMessage::Capacity(report);
        let frame = encode_frame(1, &message, MAX_FRAME_BYTES).unwrap();
        let (_, back): (u16, AgentMessage) = decode_frame(&frame, Some(1), MAX_FRAME_BYTES).unwrap();
        prop_assert_eq!(back, message);
    }
}
