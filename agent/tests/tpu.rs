//! TPU detection against fake device nodes and a GCE metadata server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::mpsc,
};

use pyxis_agent::{hwclass::ClassOverrides, tpu};
use pyxis_protocol::Vendor;

/// Serves one metadata request; sends the request head it saw back through the channel.
fn metadata_server(answer: &'static str) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/computeMetadata/v1", listener.local_addr().unwrap());
    let (seen, heads) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let flavored = head.to_lowercase().contains("metadata-flavor: google");
            let (status, body) = if flavored {
                ("200 OK", answer)
            } else {
                ("403 Forbidden", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = seen.send(head);
        }
    });
    (url, heads)
}

fn fake_dev(nodes: &[&str]) -> tempfile::TempDir {
    let dev = tempfile::tempdir().unwrap();
    for node in nodes {
        let path = dev.path().join(node);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }
    dev
}

#[test]
fn accel_nodes_and_metadata_give_typed_chips() {
    let dev = fake_dev(&["accel0", "accel1", "accel2", "accel3", "null", "accelerometer"]);
    let (url, heads) = metadata_server("v5litepod-4");
    let chips = tpu::probe(dev.path(), &url, "tpu-host", 0, &ClassOverrides::default());
    assert_eq!(chips.len(), 4);
    assert!(chips
        .iter()
        .all(|c| c.vendor == Vendor::Google && c.hardware_class == "TPU-v5e" && !c.simulated));
    assert_eq!(chips[0].memory_bytes, 16 << 30);
    assert_eq!(chips[0].details.architecture.as_deref(), Some("v5e"));
    assert_eq!(chips[3].uuid, "TPU-tpu-host-accel3");
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with("GET /computeMetadata/v1/instance/attributes/accelerator-type "),
        "{head}"
    );
}

#[test]
fn vfio_groups_count_as_chips_and_the_control_node_does_not() {
    let dev = fake_dev(&["vfio/vfio", "vfio/0", "vfio/1"]);
    let (url, _heads) = metadata_server("v5p-8");
    let chips = tpu::probe(dev.path(), &url, "h", 2, &ClassOverrides::default());
    assert_eq!(chips.iter().map(|c| c.index).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(chips[0].hardware_class, "TPU-v5p");
}

#[test]
fn no_metadata_server_still_reports_the_chips() {
    let dev = fake_dev(&["accel0"]);
    // A port with nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let chips = tpu::probe(
        dev.path(),
        &format!("http://{closed}"),
        "h",
        0,
        &ClassOverrides::default(),
    );
    assert_eq!(chips.len(), 1);
    assert_eq!(chips[0].hardware_class, "TPU-unknown");
    assert!(chips[0].model.contains("type unknown"));
}

#[test]
fn no_device_nodes_means_no_tpu_and_no_metadata_query() {
    let dev = fake_dev(&["null", "zero"]);
    let (url, heads) = metadata_server("v4-8");
    assert!(tpu::probe(dev.path(), &url, "h", 0, &ClassOverrides::default()).is_empty());
    assert!(heads.try_recv().is_err(), "the metadata server must not be asked");
}
