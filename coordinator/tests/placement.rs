//! Placement engine tests: data-driven cases (one helper, one table per topic) and
//! property tests. Every case is also checked for the engine's invariants and for
//! idempotence (a second pass over the output changes nothing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use pyxis_coordinator::placement::{
    place, place_with, Action, Deployment, Device, DeviceHealth, DeviceLink, HardwareClass, MigInstance, Node,
    NodeState, Placement, PlacementInput, QuotaMode, Replica, Tenant, Verdicts,
};

const GIB: u64 = 1 << 30;

// ----- The case format -----
//
// Input, one item per line (`#` starts a comment):
//
//   class NAME capacity=1.0 [price=4.1]
//   node NAME [state=cordoned|draining|not-ready] [runtimes=vllm,tgi] [gpus=4xH100[:80][+2xA100:40]]
//        [fabric=all|0-1-2-3/4-5-6-7] [unhealthy=0,1] [degraded=2] [used=0:70,1:10 (GiB used by others)]
//        [mig=DEVICE:CLASS:GIB*COUNT]...
//   tenant NAME [weight=1] [guarantee=0] [limit=N] [dry-run]
//   deploy TENANT/NAME [gpus=1] [mem=GIB] [replicas=N|MIN..MAX] [runtimes=vllm,...] [classes=A,B]
//          [prefer=A,B] [linked] [created=N]
//   replica NAME TENANT/DEPLOYMENT NODE g0,g1|- RUNTIME [created=N]
//
// Devices are named `NODE-gINDEX`, MIG instances `NODE-gINDEX-mK`; cases write them
// without the node prefix. Node defaults: ready, runtimes `vllm`, 80 GiB devices, no fabric.
// Deployment defaults: 1 GPU, 0 memory, 1 replica, runtime `vllm`, created in line order.
//
// Expectations, one per line:
//
//   count DEP N              DEP has N replicas in the new placement
//   on DEP NODE N            ... N of them on NODE
//   at DEP NODE g0,g1        ... one of them on NODE with exactly these devices
//   runtime DEP NODE KIND    ... every one on NODE runs KIND
//   kept NAME                replica NAME is still placed
//   stop NAME TEXT           NAME is stopped, the reason reading TEXT
//   stops N / places N       number of stop / place actions
//   replaces DEP NAME        a new replica of DEP replaces NAME
//   usage TENANT N           TENANT holds N normalised GPUs
//   explain DEP TEXT         DEP's explanation contains TEXT
//   no-explain DEP           DEP has no explanation

struct Case {
    name: &'static str,
    input: &'static str,
    expect: &'static str,
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
}

fn options<'a>(tokens: impl Iterator<Item = &'a str>) -> (Vec<(&'a str, &'a str)>, Vec<&'a str>) {
    let mut pairs = Vec::new();
    let mut flags = Vec::new();
    for token in tokens {
        match token.split_once('=') {
            Some((key, value)) => pairs.push((key, value)),
            None => flags.push(token),
        }
    }
    (pairs, flags)
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn number(value: &str) -> f64 {
    value.parse().unwrap_or_else(|_| panic!("not a number: {value}"))
}

fn parse_node(name: &str, pairs: &[(&str, &str)]) -> Node {
    let mut node = Node {
        name: name.to_owned(),
        state: NodeState::Ready,
        runtimes: vec!["vllm".into()],
        devices: Vec::new(),
    };
    for &(key, value) in pairs {
        match key {
            "state" => {
                node.state = match value {
                    "ready" => NodeState::Ready,
                    "cordoned" => NodeState::Cordoned,
                    "draining" => NodeState::Draining,
                    "not-ready" => NodeState::NotReady,
                    other => panic!("unknown node state {other}"),
                }
            }
            "runtimes" => node.runtimes = list(value),
            "gpus" => {
                for group in value.split('+') {
                    let (count, class) = group.split_once('x').expect("gpus=COUNTxCLASS");
                    let (class, memory) = class.split_once(':').unwrap_or((class, "80"));
                    for _ in 0..count.parse::<u32>().unwrap() {
                        let index = node.devices.len() as u32;
                        node.devices.push(Device {
                            uuid: format!("{name}-g{index}"),
                            index,
                            hardware_class: class.to_owned(),
                            memory_bytes: (number(memory) * GIB as f64) as u64,
                            other_memory_used_bytes: None,
                            health: DeviceHealth::Healthy,
                            links: Vec::new(),
                            mig: None,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let count = node.devices.len() as u32;
    for &(key, value) in pairs {
        match key {
            "fabric" => {
                let islands: Vec<Vec<u32>> = if value == "all" {
                    vec![(0..count).collect()]
                } else {
                    value
                        .split('/')
                        .map(|island| island.split('-').map(|i| i.parse().unwrap()).collect())
                        .collect()
                };
                for island in islands {
                    for &device in &island {
                        let links = island
                            .iter()
                            .filter(|&&peer| peer != device)
                            .map(|&peer| DeviceLink { peer, fabric: true })
                            .collect::<Vec<_>>();
                        node.devices[device as usize].links.extend(links);
                    }
                }
            }
            "unhealthy" | "degraded" => {
                let health = if key == "unhealthy" {
                    DeviceHealth::Unhealthy
                } else {
                    DeviceHealth::Degraded
                };
                for index in list(value) {
                    node.devices[index.parse::<usize>().unwrap()].health = health;
                }
            }
            "used" => {
                for entry in list(value) {
                    let (index, gib) = entry.split_once(':').unwrap();
                    node.devices[index.parse::<usize>().unwrap()].other_memory_used_bytes =
                        Some((number(gib) * GIB as f64) as u64);
                }
            }
            "mig" => {
                let mut parts = value.splitn(3, ':');
                let index: usize = parts.next().unwrap().parse().unwrap();
                let class = parts.next().unwrap();
                let spec = parts.next().unwrap();
                let (memory, instances) = spec.split_once('*').unwrap_or((spec, "1"));
                let device = &mut node.devices[index];
                let list = device.mig.get_or_insert_with(Vec::new);
                for _ in 0..instances.parse::<u32>().unwrap() {
                    let k = list.len();
                    list.push(MigInstance {
                        uuid: format!("{name}-g{index}-m{k}"),
                        hardware_class: class.to_owned(),
                        memory_bytes: (number(memory) * GIB as f64) as u64,
                    });
                }
            }
            _ => {}
        }
    }
    node
}

fn parse_input(text: &str) -> PlacementInput {
    let mut input = PlacementInput::default();
    for line in lines(text) {
        let mut tokens = line.split_whitespace();
        let kind = tokens.next().unwrap();
        match kind {
            "class" => {
                let name = tokens.next().unwrap().to_owned();
                let (pairs, _) = options(tokens);
                let mut class = HardwareClass::default();
                for (key, value) in pairs {
                    match key {
                        "capacity" => class.relative_capacity = number(value),
                        "price" => class.price_per_gpu_hour = number(value),
                        other => panic!("unknown class option {other}"),
                    }
                }
                input.classes.insert(name, class);
            }
            "node" => {
                let name = tokens.next().unwrap();
                let (pairs, _) = options(tokens);
                input.nodes.push(parse_node(name, &pairs));
            }
            "tenant" => {
                let name = tokens.next().unwrap().to_owned();
                let (pairs, flags) = options(tokens);
                let mut tenant = Tenant {
                    name,
                    weight: 1.0,
                    guarantee: 0.0,
                    limit: None,
                    quota_mode: QuotaMode::Enforce,
                };
                for (key, value) in pairs {
                    match key {
                        "weight" => tenant.weight = number(value),
                        "guarantee" => tenant.guarantee = number(value),
                        "limit" => tenant.limit = Some(number(value)),
                        other => panic!("unknown tenant option {other}"),
                    }
                }
                if flags.contains(&"dry-run") {
                    tenant.quota_mode = QuotaMode::DryRun;
                }
                input.tenants.push(tenant);
            }
            "deploy" => {
                let (tenant, name) = tokens.next().unwrap().split_once('/').unwrap();
                let (pairs, flags) = options(tokens);
                let mut deployment = Deployment {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                    created: input.deployments.len() as u64,
                    gpus_per_replica: 1,
                    gpu_memory_bytes: 0,
                    allowed_classes: Vec::new(),
                    preferred_classes: Vec::new(),
                    runtimes: vec!["vllm".into()],
                    min_replicas: 1,
                    max_replicas: 1,
                    require_linked_gpus: flags.contains(&"linked"),
                };
                for (key, value) in pairs {
                    match key {
                        "gpus" => deployment.gpus_per_replica = value.parse().unwrap(),
                        "mem" => deployment.gpu_memory_bytes = (number(value) * GIB as f64) as u64,
                        "replicas" => {
                            let (min, max) = value.split_once("..").unwrap_or((value, value));
                            deployment.min_replicas = min.parse().unwrap();
                            deployment.max_replicas = max.parse().unwrap();
                        }
                        "runtimes" => deployment.runtimes = list(value),
                        "classes" => deployment.allowed_classes = list(value),
                        "prefer" => deployment.preferred_classes = list(value),
                        "created" => deployment.created = value.parse().unwrap(),
                        other => panic!("unknown deploy option {other}"),
                    }
                }
                input.deployments.push(deployment);
            }
            "replica" => {
                let name = tokens.next().unwrap().to_owned();
                let (tenant, deployment) = tokens.next().unwrap().split_once('/').unwrap();
                let node = tokens.next().unwrap().to_owned();
                let devices = tokens.next().unwrap();
                let devices = if devices == "-" {
                    Vec::new()
                } else {
                    devices.split(',').map(|device| format!("{node}-{device}")).collect()
                };
                let runtime = tokens.next().unwrap().to_owned();
                let (pairs, _) = options(tokens);
                let created = pairs
                    .iter()
                    .find(|(key, _)| *key == "created")
                    .map_or(input.current.len() as u64, |(_, value)| value.parse().unwrap());
                input.current.push(Replica {
                    name,
                    tenant: tenant.to_owned(),
                    deployment: deployment.to_owned(),
                    node,
                    devices,
                    runtime,
                    created,
                });
            }
            other => panic!("unknown input line kind {other}"),
        }
    }
    input.next_sequence = 1000;
    input
}

fn short(node: &str, uuid: &str) -> String {
    uuid.strip_prefix(&format!("{node}-")).unwrap_or(uuid).to_owned()
}

fn replicas_of<'a>(placement: &'a Placement, key: &str) -> Vec<&'a Replica> {
    let (tenant, deployment) = key.split_once('/').expect("TENANT/DEPLOYMENT");
    placement
        .replicas
        .iter()
        .filter(|replica| replica.tenant == tenant && replica.deployment == deployment)
        .collect()
}

fn render(placement: &Placement) -> String {
    let mut out = String::new();
    for replica in &placement.replicas {
        let devices: Vec<String> = replica.devices.iter().map(|uuid| short(&replica.node, uuid)).collect();
        out += &format!(
            "  {} {}/{} {} [{}] {}\n",
            replica.name,
            replica.tenant,
            replica.deployment,
            replica.node,
            devices.join(","),
            replica.runtime
        );
    }
    for action in &placement.actions {
        match action {
            Action::Place { replica, replaces } => out += &format!("  place {} replaces {replaces:?}\n", replica.name),
            Action::Stop { replica, reason } => out += &format!("  stop {}: {reason}\n", replica.name),
        }
    }
    for explanation in &placement.explanations {
        out += &format!("{explanation}");
    }
    out
}

/// Runs every case of a table: parse, place, check invariants and idempotence, then the
/// expectations. Reports every failing case, not just the first.
fn check(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let input = parse_input(case.input);
        let placement = place(&input).unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let mut problems = invariant_violations(&input, &placement);
        problems.extend(idempotence_violations(&input, &placement));
        problems.extend(expectation_failures(case.expect, &placement));
        if !problems.is_empty() {
            failures.push(format!(
                "case `{}`:\n- {}\n{}",
                case.name,
                problems.join("\n- "),
                render(&placement)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn expectation_failures(expect: &str, placement: &Placement) -> Vec<String> {
    let mut problems = Vec::new();
    let stops: Vec<(&Replica, String)> = placement
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Stop { replica, reason } => Some((replica, reason.to_string())),
            Action::Place { .. } => None,
        })
        .collect();
    let places: Vec<(&Replica, &Option<String>)> = placement
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Place { replica, replaces } => Some((replica, replaces)),
            Action::Stop { .. } => None,
        })
        .collect();
    for line in lines(expect) {
        let mut tokens = line.split_whitespace();
        let kind = tokens.next().unwrap();
        let args: Vec<&str> = tokens.collect();
        let rest = |from: usize| line.split_whitespace().skip(from + 1).collect::<Vec<_>>().join(" ");
        let ok = match kind {
            "count" => replicas_of(placement, args[0]).len() == args[1].parse::<usize>().unwrap(),
            "on" => {
                replicas_of(placement, args[0])
                    .iter()
                    .filter(|replica| replica.node == args[1])
                    .count()
                    == args[2].parse::<usize>().unwrap()
            }
            "at" => {
                let mut wanted: Vec<String> = if args[2] == "-" { Vec::new() } else { list(args[2]) };
                wanted.sort();
                replicas_of(placement, args[0]).iter().any(|replica| {
                    let mut devices: Vec<String> =
                        replica.devices.iter().map(|uuid| short(&replica.node, uuid)).collect();
                    devices.sort();
                    replica.node == args[1] && devices == wanted
                })
            }
            "runtime" => {
                let here: Vec<_> = replicas_of(placement, args[0])
                    .into_iter()
                    .filter(|replica| replica.node == args[1])
                    .collect();
                !here.is_empty() && here.iter().all(|replica| replica.runtime == args[2])
            }
            "kept" => placement.replicas.iter().any(|replica| replica.name == args[0]),
            "stop" => {
                let text = rest(1);
                stops
                    .iter()
                    .any(|(replica, reason)| replica.name == args[0] && reason.contains(&text))
            }
            "stops" => stops.len() == args[0].parse::<usize>().unwrap(),
            "places" => places.len() == args[0].parse::<usize>().unwrap(),
            "replaces" => {
                let (tenant, deployment) = args[0].split_once('/').unwrap();
                places.iter().any(|(replica, replaces)| {
                    replica.tenant == tenant && replica.deployment == deployment && replaces.as_deref() == Some(args[1])
                })
            }
            "usage" => placement
                .tenants
                .iter()
                .any(|share| share.tenant == args[0] && (share.usage - number(args[1])).abs() < 1e-6),
            "explain" => {
                let (tenant, deployment) = args[0].split_once('/').unwrap();
                let text = rest(1);
                placement.explanations.iter().any(|explanation| {
                    explanation.tenant == tenant
                        && explanation.deployment == deployment
                        && explanation.to_string().contains(&text)
                })
            }
            "no-explain" => {
                let (tenant, deployment) = args[0].split_once('/').unwrap();
                !placement
                    .explanations
                    .iter()
                    .any(|explanation| explanation.tenant == tenant && explanation.deployment == deployment)
            }
            other => panic!("unknown expectation {other}"),
        };
        if !ok {
            problems.push(format!("expected `{line}`"));
        }
    }
    problems
}

// ----- Invariants, shared by the cases and the property tests -----

/// Everything that must hold of any output: no device twice; new replicas only on ready
/// nodes, on healthy or degraded devices of an allowed class with the memory, with the
/// first supported runtime; no replica on an unhealthy device; on a lost or draining node
/// only replicas that were there (kept until replaced); every enforced limit respected
/// (replicas awaiting replacement do not count).
fn invariant_violations(input: &PlacementInput, placement: &Placement) -> Vec<String> {
    let mut problems = Vec::new();
    let nodes: HashMap<&str, &Node> = input.nodes.iter().map(|node| (node.name.as_str(), node)).collect();
    let mut units: HashMap<&str, (&str, &str, u64, DeviceHealth, bool)> = HashMap::new();
    let mut parents = HashSet::new();
    for node in &input.nodes {
        for device in &node.devices {
            match &device.mig {
                Some(instances) => {
                    parents.insert(device.uuid.as_str());
                    for instance in instances {
                        units.insert(
                            &instance.uuid,
                            (
                                &node.name,
                                &instance.hardware_class,
                                instance.memory_bytes,
                                device.health,
                                true,
                            ),
                        );
                    }
                }
                None => {
                    let free = device
                        .memory_bytes
                        .saturating_sub(device.other_memory_used_bytes.unwrap_or(0));
                    units.insert(
                        &device.uuid,
                        (&node.name, &device.hardware_class, free, device.health, false),
                    );
                }
            }
        }
    }
    let deployments: HashMap<(&str, &str), &Deployment> = input
        .deployments
        .iter()
        .map(|deployment| ((deployment.tenant.as_str(), deployment.name.as_str()), deployment))
        .collect();
    let new: HashSet<&str> = placement
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Place { replica, .. } => Some(replica.name.as_str()),
            Action::Stop { .. } => None,
        })
        .collect();
    let mut seen = HashSet::new();
    let mut usage: BTreeMap<&str, f64> = BTreeMap::new();
    for replica in &placement.replicas {
        let Some(node) = nodes.get(replica.node.as_str()) else {
            problems.push(format!("{} is on unknown node {}", replica.name, replica.node));
            continue;
        };
        let Some(deployment) = deployments.get(&(replica.tenant.as_str(), replica.deployment.as_str())) else {
            problems.push(format!("{} belongs to no deployment", replica.name));
            continue;
        };
        if replica.devices.len() != deployment.gpus_per_replica as usize {
            problems.push(format!("{} holds {} devices", replica.name, replica.devices.len()));
        }
        let is_new = new.contains(replica.name.as_str());
        let displaced = matches!(node.state, NodeState::Draining | NodeState::NotReady);
        if displaced && !input.current.contains(replica) {
            problems.push(format!(
                "{} is on {} node {} and was not there",
                replica.name,
                node.state.as_str(),
                node.name
            ));
        }
        if is_new {
            if node.state != NodeState::Ready {
                problems.push(format!("{} placed on unschedulable node {}", replica.name, node.name));
            }
            let first = deployment
                .runtimes
                .iter()
                .find(|runtime| node.runtimes.contains(runtime));
            if first != Some(&replica.runtime) {
                problems.push(format!(
                    "{} runs {} on {}, not the first supported",
                    replica.name, replica.runtime, node.name
                ));
            }
        }
        for uuid in &replica.devices {
            if !seen.insert(uuid.as_str()) {
                problems.push(format!("device {uuid} given twice"));
            }
            if parents.contains(uuid.as_str()) {
                problems.push(format!("MIG parent {uuid} placed whole"));
            }
            let Some(&(unit_node, class, free, health, mig)) = units.get(uuid.as_str()) else {
                problems.push(format!("{} holds unknown device {uuid}", replica.name));
                continue;
            };
            if unit_node != node.name {
                problems.push(format!("{} holds {uuid} of another node", replica.name));
            }
            if health == DeviceHealth::Unhealthy {
                problems.push(format!("{} holds unhealthy {uuid}", replica.name));
            }
            if !deployment.allowed_classes.is_empty() && !deployment.allowed_classes.iter().any(|c| c == class) {
                problems.push(format!("{} holds {uuid} of disallowed class {class}", replica.name));
            }
            if mig && replica.devices.len() > 1 {
                problems.push(format!("{} uses MIG instance {uuid} in a gang", replica.name));
            }
            if is_new && free < deployment.gpu_memory_bytes {
                problems.push(format!("{} placed on {uuid} without the memory", replica.name));
            }
            if !displaced {
                let capacity = input.classes.get(class).map_or(1.0, |class| class.relative_capacity);
                *usage.entry(replica.tenant.as_str()).or_default() += capacity;
            }
        }
    }
    for tenant in &input.tenants {
        let used = usage.get(tenant.name.as_str()).copied().unwrap_or(0.0);
        if let (QuotaMode::Enforce, Some(limit)) = (tenant.quota_mode, tenant.limit) {
            if used > limit + 1e-6 {
                problems.push(format!("tenant {} holds {used} above its limit {limit}", tenant.name));
            }
        }
    }
    problems
}

/// A second pass over the output must change nothing.
fn idempotence_violations(input: &PlacementInput, placement: &Placement) -> Vec<String> {
    let mut again = input.clone();
    again.current = placement.replicas.clone();
    again.next_sequence = placement.next_sequence;
    let second = place(&again).expect("the output is a valid input");
    let mut problems = Vec::new();
    if !second.actions.is_empty() {
        problems.push(format!("not idempotent: the second pass acts: {:?}", second.actions));
    }
    if second.replicas != placement.replicas {
        problems.push("not idempotent: the second pass changes the placement".to_owned());
    }
    problems
}

// ----- Tables -----

#[test]
fn contention() {
    check(&[
        Case {
            name: "equal weights split the fleet evenly",
            input: "
                node n1 gpus=8xH100
                tenant a
                tenant b
                deploy a/m replicas=0..8
                deploy b/m replicas=0..8
            ",
            expect: "
                count a/m 4
                count b/m 4
                explain a/m 4 placed, 4 pending
                explain a/m gpus: 0 eligible free, 1 needed (others in use by a, b)
            ",
        },
        Case {
            name: "weights 3:1 split 6/2",
            input: "
                node n1 gpus=8xH100
                tenant a weight=3
                tenant b weight=1
                deploy a/m replicas=0..8
                deploy b/m replicas=0..8
            ",
            expect: "
                usage a 6
                usage b 2
            ",
        },
        Case {
            name: "min replicas before anyone's elastic ones",
            input: "
                node n1 gpus=4xH100
                tenant a weight=10
                tenant b
                deploy a/m replicas=0..8
                deploy b/m replicas=2..2
            ",
            expect: "
                count b/m 2
                count a/m 2
            ",
        },
        Case {
            name: "guarantees are served before weights",
            input: "
                node n1 gpus=4xH100
                tenant a guarantee=3
                tenant b weight=10
                deploy a/m replicas=0..4
                deploy b/m replicas=0..4
            ",
            expect: "
                usage a 3
                usage b 1
                explain b/m fair share: b holds 1.00, at or above its guarantee 0.00
            ",
        },
        Case {
            name: "within a tenant, the deployment with fewer replicas goes next",
            input: "
                node n1 gpus=4xH100
                tenant a
                deploy a/x replicas=0..4
                deploy a/y replicas=0..4
            ",
            expect: "
                count a/x 2
                count a/y 2
            ",
        },
        Case {
            name: "an existing placement is not rebalanced for a newcomer without a guarantee",
            input: "
                node n1 gpus=2xH100
                tenant a
                tenant b
                deploy a/m replicas=0..2
                deploy b/m replicas=0..2
                replica r1 a/m n1 g0 vllm
                replica r2 a/m n1 g1 vllm
            ",
            expect: "
                kept r1
                kept r2
                stops 0
                places 0
                explain b/m fair share: b holds 0.00, at or above its guarantee 0.00
            ",
        },
    ]);
}

#[test]
fn reclaim() {
    check(&[
        Case {
            name: "a tenant below its guarantee takes the newest borrowed replicas",
            input: "
                node n1 gpus=4xH100
                tenant batch
                tenant research guarantee=2
                deploy batch/m replicas=0..4
                deploy research/m replicas=0..2
                replica r1 batch/m n1 g0 vllm created=1
                replica r2 batch/m n1 g1 vllm created=2
                replica r3 batch/m n1 g2 vllm created=3
                replica r4 batch/m n1 g3 vllm created=4
            ",
            expect: "
                stop r4 reclaimed for research/m
                stop r3 reclaimed for research/m
                stops 2
                kept r1
                kept r2
                usage research 2
                usage batch 2
                explain batch/m 2 placed, 2 pending
            ",
        },
        Case {
            name: "elastic replicas go before min replicas, even when older",
            input: "
                node n1 gpus=4xH100
                tenant batch
                tenant research guarantee=2
                deploy batch/elastic replicas=0..2
                deploy batch/fixed replicas=2..2
                deploy research/m replicas=0..2
                replica r1 batch/elastic n1 g0 vllm created=1
                replica r2 batch/elastic n1 g1 vllm created=2
                replica r3 batch/fixed n1 g2 vllm created=3
                replica r4 batch/fixed n1 g3 vllm created=4
            ",
            expect: "
                stop r1 reclaimed
                stop r2 reclaimed
                kept r3
                kept r4
                count research/m 2
            ",
        },
        Case {
            name: "never below the victim's guarantee",
            input: "
                node n1 gpus=4xH100
                tenant batch guarantee=3
                tenant research guarantee=2
                deploy batch/m replicas=0..4
                deploy research/m replicas=0..2
                replica r1 batch/m n1 g0 vllm created=1
                replica r2 batch/m n1 g1 vllm created=2
                replica r3 batch/m n1 g2 vllm created=3
                replica r4 batch/m n1 g3 vllm created=4
            ",
            expect: "
                stop r4 reclaimed
                stops 1
                usage batch 3
                usage research 1
                explain research/m fair share: the holders are within their fair share or at their guarantee
            ",
        },
        Case {
            name: "no reclaim for a tenant at its guarantee",
            input: "
                node n1 gpus=2xH100
                tenant batch
                tenant research guarantee=1
                deploy batch/m replicas=0..1
                deploy research/m replicas=0..2
                replica r1 batch/m n1 g0 vllm
                replica r2 research/m n1 g1 vllm
            ",
            expect: "
                stops 0
                places 0
                explain research/m fair share: research holds 1.00, at or above its guarantee 1.00
            ",
        },
        Case {
            name: "reclaim does not overshoot the guarantee",
            input: "
                node n1 gpus=4xH100 fabric=all
                tenant batch
                tenant research guarantee=1
                deploy batch/m replicas=0..4
                deploy research/big gpus=2 replicas=0..1
                replica r1 batch/m n1 g0 vllm
                replica r2 batch/m n1 g1 vllm
                replica r3 batch/m n1 g2 vllm
                replica r4 batch/m n1 g3 vllm
            ",
            expect: "
                stops 0
                explain research/big fair share: a replica here would take research from 0.00 past its guarantee 1.00
            ",
        },
        Case {
            name: "a gang reclaims a linked set on the node needing the fewest victims",
            input: "
                node n1 gpus=4xH100 fabric=all
                node n2 gpus=4xH100 fabric=0-1/2-3
                tenant batch
                tenant research guarantee=2
                deploy batch/one replicas=0..8
                deploy batch/two gpus=2 replicas=0..1
                deploy research/tp gpus=2 replicas=1
                replica r1 batch/one n1 g0 vllm created=1
                replica r2 batch/one n1 g1 vllm created=2
                replica r3 batch/one n1 g2 vllm created=3
                replica r4 batch/one n1 g3 vllm created=4
                replica r5 batch/one n2 g0 vllm created=5
                replica r6 batch/one n2 g1 vllm created=6
                replica r7 batch/two n2 g2,g3 vllm created=7
            ",
            expect: "
                stop r7 reclaimed for research/tp
                stops 1
                at research/tp n2 g2,g3
            ",
        },
        Case {
            name: "a min replica placed in the same pass is withdrawn for a guarantee, not stopped",
            input: "
                node n1 gpus=1xH100
                tenant batch
                tenant research guarantee=1
                deploy batch/m replicas=1
                deploy research/m replicas=0..1
            ",
            expect: "
                count research/m 1
                count batch/m 0
                places 1
                stops 0
                explain batch/m 0 placed, 1 pending (1 below min)
            ",
        },
        Case {
            name: "replacements for a lost node reclaim up to the guarantee",
            input: "
                node n1 gpus=2xH100
                node n2 gpus=2xH100 state=not-ready
                tenant batch
                tenant research guarantee=2
                deploy batch/m replicas=0..2
                deploy research/m replicas=0..2 classes=H100
                replica r1 batch/m n1 g0 vllm
                replica r2 research/m n2 g0 vllm
                replica r3 research/m n2 g1 vllm
            ",
            expect: "
                stop r2 node not ready
                stop r3 node not ready
                stop r1 reclaimed
                count research/m 2
                count batch/m 0
                places 2
                stops 3
            ",
        },
    ]);
}

#[test]
fn borrowing() {
    check(&[
        Case {
            name: "idle capacity is lent up to the limit",
            input: "
                node n1 gpus=8xH100
                tenant a guarantee=2 limit=6
                deploy a/m replicas=0..8
            ",
            expect: "
                count a/m 6
                explain a/m quota: a would hold 7.00 of its limit 6.00 normalised GPUs
            ",
        },
        Case {
            name: "without a limit a tenant borrows the whole idle fleet",
            input: "
                node n1 gpus=4xH100
                node n2 gpus=4xH100
                tenant a guarantee=1
                deploy a/m replicas=0..8
            ",
            expect: "
                count a/m 8
                no-explain a/m
            ",
        },
        Case {
            name: "borrowers share idle capacity by weight, each up to its limit",
            input: "
                node n1 gpus=8xH100
                tenant a weight=1 limit=2
                tenant b weight=1
                deploy a/m replicas=0..8
                deploy b/m replicas=0..8
            ",
            expect: "
                usage a 2
                usage b 6
            ",
        },
        Case {
            name: "limits are in normalised GPUs",
            input: "
                class A100 capacity=0.5
                node n1 gpus=8xA100:40
                tenant a limit=3
                deploy a/m replicas=0..8
            ",
            expect: "
                count a/m 6
                usage a 3
            ",
        },
    ]);
}

#[test]
fn gang_placement() {
    check(&[
        Case {
            name: "a 4-GPU replica takes a whole NVLink island",
            input: "
                node n1 gpus=8xH100 fabric=0-1-2-3/4-5-6-7
                tenant a
                deploy a/one replicas=1
                deploy a/big gpus=4 replicas=1
                replica r1 a/one n1 g1 vllm
            ",
            expect: "
                at a/big n1 g4,g5,g6,g7
            ",
        },
        Case {
            name: "a linked node beats a PCIe node",
            input: "
                node n1 gpus=4xH100
                node n2 gpus=4xH100 fabric=all
                tenant a
                deploy a/big gpus=4 replicas=1
            ",
            expect: "
                at a/big n2 g0,g1,g2,g3
            ",
        },
        Case {
            name: "PCIe is the fallback when no linked set exists",
            input: "
                node n1 gpus=4xH100
                tenant a
                deploy a/big gpus=2 replicas=2
            ",
            expect: "
                at a/big n1 g0,g1
                at a/big n1 g2,g3
            ",
        },
        Case {
            name: "a deployment that requires linked GPUs waits",
            input: "
                node n1 gpus=4xH100 fabric=0-1
                tenant a
                deploy a/big gpus=2 replicas=2 linked
            ",
            expect: "
                count a/big 1
                at a/big n1 g0,g1
                explain a/big n1: no linked GPUs: no 2 free devices of one class linked by NVLink/xGMI
            ",
        },
        Case {
            name: "all or nothing: free GPUs on two nodes do not make one replica",
            input: "
                node n1 gpus=4xH100 fabric=all
                node n2 gpus=4xH100 fabric=all
                tenant a
                deploy a/one replicas=4
                deploy a/big gpus=4 replicas=1
                replica r1 a/one n1 g0 vllm
                replica r2 a/one n1 g1 vllm
                replica r3 a/one n2 g0 vllm
                replica r4 a/one n2 g1 vllm
            ",
            expect: "
                count a/big 0
                explain a/big n1: gpus: 2 eligible free, 4 needed (others in use by a)
                explain a/big n2: gpus: 2 eligible free, 4 needed
            ",
        },
        Case {
            name: "one class per replica",
            input: "
                node n1 gpus=2xH100+2xA100
                tenant a
                deploy a/big gpus=3 replicas=1
            ",
            expect: "
                count a/big 0
                explain a/big n1: gpus: no 3 free eligible devices of a single class
            ",
        },
    ]);
}

#[test]
fn fragmentation() {
    check(&[
        Case {
            name: "small replicas pack onto one node and leave a whole node for a 4-GPU replica",
            input: "
                node n1 gpus=4xH100 fabric=all
                node n2 gpus=4xH100 fabric=all
                tenant a
                tenant b
                deploy a/s1 replicas=1
                deploy b/s2 replicas=1
                deploy a/s3 replicas=1
                deploy b/big gpus=4 replicas=1
            ",
            expect: "
                on a/s1 n1 1
                on b/s2 n1 1
                on a/s3 n1 1
                at b/big n2 g0,g1,g2,g3
            ",
        },
        Case {
            name: "a new replica goes to the node it leaves fullest",
            input: "
                node n1 gpus=4xH100
                node n2 gpus=4xH100
                tenant a
                deploy a/old replicas=3
                deploy a/pair gpus=2 replicas=1
                deploy a/triple gpus=3 replicas=1
                replica r1 a/old n1 g0 vllm
                replica r2 a/old n2 g0 vllm
                replica r3 a/old n2 g1 vllm
            ",
            expect: "
                on a/pair n2 1
                on a/triple n1 1
            ",
        },
        Case {
            name: "replicas of one deployment spread over nodes already in use",
            input: "
                node n1 gpus=4xH100
                node n2 gpus=4xH100
                node n3 gpus=4xH100
                tenant a
                deploy a/base replicas=2
                deploy a/web replicas=2
                replica r1 a/base n1 g0 vllm
                replica r2 a/base n2 g0 vllm
            ",
            expect: "
                on a/web n1 1
                on a/web n2 1
            ",
        },
        Case {
            name: "an existing replica is never moved to pack better",
            input: "
                node n1 gpus=4xH100
                node n2 gpus=4xH100
                tenant a
                deploy a/x replicas=1
                deploy a/y replicas=1
                replica r1 a/x n1 g0 vllm
                replica r2 a/y n2 g0 vllm
            ",
            expect: "
                places 0
                stops 0
            ",
        },
    ]);
}

/// Nodes alike but for free device memory (what agents report for idle devices varies),
/// and nodes that become empty during a pass.
#[test]
fn alike_nodes() {
    check(&[
        Case {
            name: "among empty nodes alike but for memory, the first with the memory wins",
            input: "
                node n1 gpus=2xH100 used=0:70,1:70
                node n2 gpus=2xH100 used=0:70
                node n3 gpus=2xH100
                tenant a
                deploy a/x mem=40
            ",
            expect: "
                at a/x n2 g1
            ",
        },
        Case {
            name: "a multi-GPU replica passes over empty nodes with a device short of memory",
            input: "
                node n1 gpus=4xH100 fabric=all used=2:50
                node n2 gpus=4xH100 fabric=all used=3:50
                node n3 gpus=4xH100 fabric=all
                tenant a
                deploy a/big gpus=4 mem=40
            ",
            expect: "
                at a/big n3 g0,g1,g2,g3
            ",
        },
        Case {
            name: "a degraded device makes a node a last resort among otherwise alike empty nodes",
            input: "
                node n1 gpus=2xH100 degraded=0
                node n2 gpus=2xH100
                tenant a
                deploy a/pair gpus=2
            ",
            expect: "
                at a/pair n2 g0,g1
            ",
        },
        Case {
            name: "a node emptied in the pass takes a replica that needs all of it",
            input: "
                node n1 gpus=4xH100 fabric=all
                node n2 gpus=4xH100 fabric=all
                tenant a
                deploy a/x replicas=1
                deploy a/big gpus=4 replicas=1
                replica r1 a/x n1 g0 vllm created=1
                replica r2 a/x n2 g0 vllm created=2
            ",
            expect: "
                stop r2 above max
                at a/big n2 g0,g1,g2,g3
            ",
        },
        Case {
            name: "a replica stopped in the pass frees its node's devices for another",
            input: "
                node n1 gpus=2xH100
                node n2 gpus=2xH100
                tenant a
                deploy a/small replicas=1
                deploy a/pair gpus=2 replicas=2
                replica r1 a/small n1 g0 vllm created=1
                replica r2 a/small n2 g0 vllm created=2
                replica r3 a/pair n1 g1 vllm created=3
            ",
            expect: "
                stop r2 above max
                stop r3 holds 1 devices
                count a/pair 1
                at a/pair n2 g0,g1
            ",
        },
    ]);
}

#[test]
fn heterogeneous_classes() {
    check(&[
        Case {
            name: "the smallest class that fits is used first",
            input: "
                class H100 capacity=1.0
                class A100 capacity=0.5
                node n1 gpus=4xA100:40
                node n2 gpus=4xH100
                tenant a limit=2
                deploy a/m replicas=0..8
            ",
            expect: "
                on a/m n1 4
                usage a 2
                explain a/m n2: quota: a would hold 3.00 of its limit 2.00
            ",
        },
        Case {
            name: "a preferred class wins over a smaller one",
            input: "
                class H100 capacity=1.0
                class A100 capacity=0.5
                node n1 gpus=4xA100:40
                node n2 gpus=4xH100
                tenant a limit=2
                deploy a/m replicas=0..8 prefer=H100
            ",
            expect: "
                on a/m n2 2
                usage a 2
            ",
        },
        Case {
            name: "disallowed classes and too little memory are explained",
            input: "
                class H100 capacity=1.0
                class A100 capacity=0.5
                node n1 gpus=4xA100:40
                node n2 gpus=2xH100 used=0:70,1:70
                tenant a
                deploy a/m mem=24 classes=H100
            ",
            expect: "
                count a/m 0
                explain a/m n1: class: 4 device(s) of class A100 not allowed
                explain a/m n2: memory: 2 device(s) with too little free memory (10.0 GiB free at most, 24.0 GiB needed)
            ",
        },
        Case {
            name: "fair shares are equal in normalised GPUs, not in devices",
            input: "
                class H100 capacity=1.0
                class A100 capacity=0.5
                node n1 gpus=4xH100
                node n2 gpus=4xA100:40
                tenant a
                tenant b
                deploy a/m replicas=0..8 classes=H100
                deploy b/m replicas=0..8
            ",
            expect: "
                usage a 3
                usage b 3
                on b/m n2 4
                on b/m n1 1
            ",
        },
        Case {
            name: "memory picks the class that fits",
            input: "
                node n1 gpus=4xL4:24
                node n2 gpus=2xH100:80
                tenant a
                deploy a/m mem=40 replicas=2
            ",
            expect: "
                on a/m n2 2
            ",
        },
    ]);
}

#[test]
fn unhealthy_devices() {
    check(&[
        Case {
            name: "unhealthy devices are skipped",
            input: "
                node n1 gpus=4xH100 unhealthy=0,1
                tenant a
                deploy a/m replicas=4
            ",
            expect: "
                count a/m 2
                at a/m n1 g2
                at a/m n1 g3
                explain a/m n1: health: 2 unhealthy device(s); gpus: 0 eligible free, 1 needed
            ",
        },
        Case {
            name: "a replica on a device that turned unhealthy is replaced",
            input: "
                node n1 gpus=2xH100 unhealthy=0
                tenant a
                deploy a/m replicas=1
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                stop r1 device n1-g0 unhealthy
                at a/m n1 g1
                replaces a/m r1
            ",
        },
        Case {
            name: "a degraded device is a last resort",
            input: "
                node n1 gpus=1xH100 degraded=0
                node n2 gpus=1xH100
                tenant a
                deploy a/one replicas=1
                deploy a/two replicas=1 created=5
            ",
            expect: "
                at a/one n2 g0
                at a/two n1 g0
            ",
        },
        Case {
            name: "within a node, healthy before degraded",
            input: "
                node n1 gpus=2xH100 degraded=0
                tenant a
                deploy a/m replicas=1
            ",
            expect: "
                at a/m n1 g1
            ",
        },
        Case {
            name: "a replica on a degraded device stays",
            input: "
                node n1 gpus=2xH100 degraded=0
                tenant a
                deploy a/m replicas=1
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                kept r1
                places 0
            ",
        },
        Case {
            name: "a gang prefers a healthy PCIe set to a linked set with a degraded device",
            input: "
                node n1 gpus=4xH100 fabric=0-1 degraded=1
                tenant a
                deploy a/big gpus=2 replicas=1
            ",
            expect: "
                at a/big n1 g0,g2
            ",
        },
    ]);
}

#[test]
fn node_states() {
    check(&[
        Case {
            name: "a cordoned node takes nothing new but keeps what it runs",
            input: "
                node n1 gpus=2xH100 state=cordoned
                node n2 gpus=2xH100
                tenant a
                deploy a/m replicas=4
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                kept r1
                on a/m n2 2
                explain a/m n1: not schedulable: node is cordoned
            ",
        },
        Case {
            name: "a draining node's replicas are replaced elsewhere",
            input: "
                node n1 gpus=2xH100 state=draining
                node n2 gpus=2xH100
                tenant a
                deploy a/m replicas=1
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                stop r1 node draining
                replaces a/m r1
                on a/m n2 1
            ",
        },
        Case {
            name: "a lost node's replicas are replaced as far as capacity allows, the rest kept",
            input: "
                node n1 gpus=2xH100 state=not-ready
                node n2 gpus=1xH100
                tenant a
                deploy a/m replicas=2
                replica r1 a/m n1 g0 vllm created=1
                replica r2 a/m n1 g1 vllm created=2
            ",
            expect: "
                stop r1 node not ready
                replaces a/m r1
                kept r2
                stops 1
                on a/m n2 1
                count a/m 2
                explain a/m 1 placed, 1 pending (1 below min); 1 kept on a draining or lost node until replaced
                explain a/m n1: not schedulable: node is not-ready
            ",
        },
        Case {
            name: "a drain with no room elsewhere keeps the replica running",
            input: "
                node n1 gpus=2xH100 state=draining
                node n2 gpus=1xH100 unhealthy=0
                tenant a
                deploy a/m replicas=1
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                kept r1
                stops 0
                places 0
                explain a/m n2: health: 1 unhealthy device(s)
            ",
        },
        Case {
            name: "a lost node's replica beyond max is stopped rather than replaced",
            input: "
                node n1 gpus=2xH100 state=not-ready
                node n2 gpus=2xH100
                tenant a
                deploy a/m replicas=1
                replica r1 a/m n1 g0 vllm
                replica r2 a/m n2 g0 vllm
            ",
            expect: "
                stop r1 node not ready
                kept r2
                places 0
            ",
        },
        Case {
            name: "a node that left the fleet",
            input: "
                node n2 gpus=1xH100
                tenant a
                deploy a/m replicas=1
                replica r1 a/m n9 g0 vllm
            ",
            expect: "
                stop r1 node gone
                replaces a/m r1
            ",
        },
    ]);
}

#[test]
fn dry_run_quota() {
    check(&[
        Case {
            name: "dry-run lets a tenant exceed its limit and says so",
            input: "
                node n1 gpus=4xH100
                tenant a limit=2 dry-run
                deploy a/m replicas=0..4
            ",
            expect: "
                count a/m 4
                explain a/m over its limit (dry-run: reported, not enforced)
                explain a/m limit 2.00 (dry-run)
            ",
        },
        Case {
            name: "enforce stops at the limit",
            input: "
                node n1 gpus=4xH100
                tenant a limit=2
                deploy a/m replicas=0..4
            ",
            expect: "
                count a/m 2
                explain a/m quota: a would hold 3.00 of its limit 2.00
            ",
        },
        Case {
            name: "enforce stops the newest elastic replicas above a lowered limit",
            input: "
                node n1 gpus=4xH100
                tenant a limit=2
                deploy a/fixed replicas=2
                deploy a/elastic replicas=0..2
                replica r1 a/elastic n1 g0 vllm created=1
                replica r2 a/elastic n1 g1 vllm created=2
                replica r3 a/fixed n1 g2 vllm created=3
                replica r4 a/fixed n1 g3 vllm created=4
            ",
            expect: "
                stop r2 tenant over its limit (4.00 of 2.00)
                stop r1 tenant over its limit (3.00 of 2.00)
                kept r3
                kept r4
            ",
        },
        Case {
            name: "a dry-run tenant's guarantee still reclaims",
            input: "
                node n1 gpus=2xH100
                tenant a guarantee=1 limit=1 dry-run
                tenant b
                deploy a/m replicas=0..2
                deploy b/m replicas=0..2
                replica r1 b/m n1 g0 vllm created=1
                replica r2 b/m n1 g1 vllm created=2
            ",
            expect: "
                stop r2 reclaimed
                usage a 1
            ",
        },
    ]);
}

#[test]
fn mig_instances() {
    check(&[
        Case {
            name: "each MIG instance is a unit; the parent is never placed whole",
            input: "
                class H100-MIG-1g.10gb capacity=0.14
                node n1 gpus=1xH100 mig=0:H100-MIG-1g.10gb:10*7
                tenant a
                deploy a/small mem=8 replicas=0..8
            ",
            expect: "
                count a/small 7
                at a/small n1 g0-m0
                at a/small n1 g0-m6
                explain a/small 7 placed, 1 pending
            ",
        },
        Case {
            name: "an instance too small for the model",
            input: "
                node n1 gpus=1xH100 mig=0:H100-MIG-1g.10gb:10*7
                tenant a
                deploy a/m mem=20
            ",
            expect: "
                count a/m 0
                explain a/m n1: memory: 7 device(s) with too little free memory (10.0 GiB free at most, 20.0 GiB needed)
            ",
        },
        Case {
            name: "MIG instances are never part of a multi-GPU replica",
            input: "
                node n1 gpus=2xH100 mig=0:H100-MIG-3g.40gb:40*2 mig=1:H100-MIG-3g.40gb:40*2
                tenant a
                deploy a/tp gpus=2
            ",
            expect: "
                count a/tp 0
                explain a/tp n1: mig: 4 MIG instance(s) cannot be part of a multi-GPU replica
            ",
        },
        Case {
            name: "best fit: a small model takes a MIG instance before a whole GPU",
            input: "
                class H100 capacity=1
                class H100-MIG-3g.40gb capacity=0.5
                node n1 gpus=2xH100 mig=0:H100-MIG-3g.40gb:40*2
                tenant a
                deploy a/small mem=30
                deploy a/large mem=60
            ",
            expect: "
                at a/small n1 g0-m0
                at a/large n1 g1
            ",
        },
    ]);
}

#[test]
fn runtime_choice() {
    check(&[
        Case {
            name: "the first runtime each node supports",
            input: "
                node n1 gpus=1xH100 runtimes=vllm,llama-cpp
                node n2 gpus=1xMI300X:192 runtimes=llama-cpp
                tenant a
                deploy a/m replicas=2 runtimes=vllm,llama-cpp
            ",
            expect: "
                runtime a/m n1 vllm
                runtime a/m n2 llama-cpp
            ",
        },
        Case {
            name: "a node without any of the runtimes",
            input: "
                node n1 gpus=1xH100 runtimes=tgi
                tenant a
                deploy a/m runtimes=vllm,llama-cpp
            ",
            expect: "
                count a/m 0
                explain a/m n1: runtime: supports none of [vllm, llama-cpp] (has [tgi])
            ",
        },
        Case {
            name: "a replica whose runtime left the list is replaced",
            input: "
                node n1 gpus=2xH100 runtimes=vllm,sglang
                tenant a
                deploy a/m runtimes=sglang
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                stop r1 runtime vllm no longer eligible
                runtime a/m n1 sglang
                replaces a/m r1
            ",
        },
        Case {
            name: "a CPU deployment needs only the runtime",
            input: "
                node n1 runtimes=vllm
                node n2 runtimes=llama-cpp
                tenant a
                deploy a/cpu gpus=0 replicas=1 runtimes=llama-cpp
            ",
            expect: "
                at a/cpu n2 -
            ",
        },
    ]);
}

#[test]
fn current_replicas() {
    check(&[
        Case {
            name: "the newest replicas above max are stopped",
            input: "
                node n1 gpus=4xH100
                tenant a
                deploy a/m replicas=0..2
                replica r1 a/m n1 g0 vllm created=1
                replica r2 a/m n1 g1 vllm created=2
                replica r3 a/m n1 g2 vllm created=3
            ",
            expect: "
                stop r3 above max replicas (2)
                kept r1
                kept r2
                no-explain a/m
            ",
        },
        Case {
            name: "a removed deployment's replicas are stopped and not replaced",
            input: "
                node n1 gpus=1xH100
                tenant a
                replica r1 a/gone n1 g0 vllm
            ",
            expect: "
                stop r1 deployment removed
                places 0
            ",
        },
        Case {
            name: "two replicas claiming one device: the older keeps it",
            input: "
                node n1 gpus=2xH100
                tenant a
                deploy a/m replicas=2
                replica r1 a/m n1 g0 vllm created=1
                replica r2 a/m n1 g0 vllm created=2
            ",
            expect: "
                kept r1
                stop r2 device n1-g0 already held by r1
                at a/m n1 g1
                replaces a/m r2
            ",
        },
        Case {
            name: "a spec change in GPUs per replica replaces the replica",
            input: "
                node n1 gpus=4xH100 fabric=all
                tenant a
                deploy a/m gpus=2
                replica r1 a/m n1 g0 vllm
            ",
            expect: "
                stop r1 holds 1 devices, deployment wants 2
                count a/m 1
            ",
        },
    ]);
}

#[test]
fn invalid_input_is_refused() {
    let input = parse_input(
        "
        tenant a weight=0
        ",
    );
    let error = place(&input).unwrap_err();
    assert_eq!(error.to_string(), "tenant a: weight 0 is not a positive number");

    let input = parse_input(
        "
        tenant a
        deploy b/m
        ",
    );
    assert_eq!(
        place(&input).unwrap_err().to_string(),
        "deployment b/m names an unknown tenant"
    );

    let input = parse_input(
        "
        tenant a guarantee=4 limit=2
        ",
    );
    assert!(place(&input).unwrap_err().to_string().contains("guarantee <= limit"));

    let input = parse_input(
        "
        node n1 gpus=1xH100
        node n1 gpus=1xH100
        ",
    );
    assert_eq!(place(&input).unwrap_err().to_string(), "node n1 is listed twice");
}

/// A large fleet completes (timings belong to the benchmark, not to tests).
#[test]
fn large_fleet_completes() {
    let mut input = PlacementInput::default();
    input.classes.insert(
        "H100".into(),
        HardwareClass {
            relative_capacity: 1.0,
            price_per_gpu_hour: 4.0,
        },
    );
    input.classes.insert(
        "A100".into(),
        HardwareClass {
            relative_capacity: 0.5,
            price_per_gpu_hour: 2.0,
        },
    );
    for node in 0..1000u32 {
        let class = if node % 3 == 0 { "A100" } else { "H100" };
        let devices = (0..8u32)
            .map(|index| Device {
                uuid: format!("n{node}-g{index}"),
                index,
                hardware_class: class.into(),
                memory_bytes: 80 * GIB,
                other_memory_used_bytes: Some(0),
                health: if (node + index) % 97 == 0 {
                    DeviceHealth::Unhealthy
                } else {
                    DeviceHealth::Healthy
                },
                links: (0..8)
                    .filter(|&peer| peer != index)
                    .map(|peer| DeviceLink { peer, fabric: true })
                    .collect(),
                mig: None,
            })
            .collect();
        input.nodes.push(Node {
            name: format!("n{node:04}"),
            state: if node % 50 == 0 {
                NodeState::Cordoned
            } else {
                NodeState::Ready
            },
            runtimes: vec!["vllm".into()],
            devices,
        });
    }
    for tenant in 0..20u32 {
        input.tenants.push(Tenant {
            name: format!("t{tenant}"),
            weight: f64::from(1 + tenant % 3),
            guarantee: f64::from(tenant * 10),
            limit: None,
            quota_mode: QuotaMode::Enforce,
        });
    }
    for deployment in 0..200u32 {
        input.deployments.push(Deployment {
            tenant: format!("t{}", deployment % 20),
            name: format!("d{deployment}"),
            created: u64::from(deployment),
            gpus_per_replica: [1, 1, 2, 4, 8][deployment as usize % 5],
            gpu_memory_bytes: 20 * GIB,
            allowed_classes: Vec::new(),
            preferred_classes: if deployment % 4 == 0 {
                vec!["H100".into()]
            } else {
                Vec::new()
            },
            runtimes: vec!["vllm".into()],
            min_replicas: 1,
            max_replicas: 1 + deployment % 20,
            require_linked_gpus: false,
        });
    }
    let started = std::time::Instant::now();
    let placement = place(&input).unwrap();
    eprintln!(
        "1,000 nodes x 8 GPUs, 200 deployments: {} replicas in {:?}",
        placement.replicas.len(),
        started.elapsed()
    );
    assert!(invariant_violations(&input, &placement).is_empty());
    assert!(placement.replicas.len() > 1000);

    // Leaving per-node verdicts out changes nothing else, and asking for one deployment's
    // gives exactly its verdicts of the full pass (on a fleet made contended).
    for deployment in input.deployments.iter_mut().take(20) {
        deployment.max_replicas = 500;
    }
    let placement = place(&input).unwrap();
    let pending = placement
        .explanations
        .iter()
        .find(|e| e.pending > 0 && !e.nodes.is_empty())
        .expect("the fleet is contended");
    let without = place_with(&input, &Verdicts::None).unwrap();
    assert_eq!(without.replicas, placement.replicas);
    assert_eq!(without.actions, placement.actions);
    assert_eq!(without.tenants, placement.tenants);
    assert!(without.explanations.iter().all(|e| e.nodes.is_empty()));
    let strip = |p: &Placement| -> Vec<_> {
        p.explanations
            .iter()
            .map(|e| {
                (
                    e.tenant.clone(),
                    e.deployment.clone(),
                    e.placed,
                    e.pending,
                    e.pending_min,
                )
            })
            .collect()
    };
    assert_eq!(strip(&without), strip(&placement));
    let key = (pending.tenant.clone(), pending.deployment.clone());
    let only = place_with(&input, &Verdicts::Only([key.clone()].into())).unwrap();
    for e in &only.explanations {
        if (e.tenant.clone(), e.deployment.clone()) == key {
            assert_eq!(e, pending);
        } else {
            assert!(e.nodes.is_empty(), "{}/{} has verdicts", e.tenant, e.deployment);
        }
    }
}

// ----- Property tests -----

/// Per node: state, device count, class, fabric layout, runtime mask, per-device bits
/// (health, memory used by others, MIG).
type NodeSeed = (u8, u8, u8, u8, u8, Vec<u8>);
/// Per tenant: weight, guarantee, limit, dry-run.
type TenantSeed = (u8, u8, u8, bool);
/// Per deployment: tenant, GPUs, memory, class mask, runtime order, min, extra, linked.
type DeploymentSeed = (u8, u8, u8, u8, u8, u8, u8, bool);
/// Per current replica: deployment, node, first unit, unit count, runtime.
type ReplicaSeed = (u8, u8, u8, u8, u8);

/// Raw numbers a fleet is built from; `build` turns any of them into a valid input.
#[derive(Debug, Clone)]
struct Seed {
    nodes: Vec<NodeSeed>,
    tenants: Vec<TenantSeed>,
    deployments: Vec<DeploymentSeed>,
    current: Vec<ReplicaSeed>,
}

const CLASSES: [&str; 3] = ["H100", "A100", "L4"];
const RUNTIMES: [&str; 3] = ["vllm", "llama-cpp", "tgi"];

fn seed() -> impl Strategy<Value = Seed> {
    let node = (
        any::<u8>(),
        0u8..=8,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 8),
    );
    let tenant = (1u8..=4, 0u8..=6, any::<u8>(), any::<bool>());
    let deployment = (
        any::<u8>(),
        0u8..=4,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        0u8..=3,
        0u8..=5,
        any::<bool>(),
    );
    let current = (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>());
    (
        prop::collection::vec(node, 1..6),
        prop::collection::vec(tenant, 1..4),
        prop::collection::vec(deployment, 0..7),
        prop::collection::vec(current, 0..10),
    )
        .prop_map(|(nodes, tenants, deployments, current)| Seed {
            nodes,
            tenants,
            deployments,
            current,
        })
}

fn build(seed: &Seed) -> PlacementInput {
    let mut input = PlacementInput::default();
    input.classes.insert(
        "H100".into(),
        HardwareClass {
            relative_capacity: 1.0,
            price_per_gpu_hour: 4.0,
        },
    );
    input.classes.insert(
        "A100".into(),
        HardwareClass {
            relative_capacity: 0.5,
            price_per_gpu_hour: 2.0,
        },
    );
    input.classes.insert(
        "H100-MIG".into(),
        HardwareClass {
            relative_capacity: 0.25,
            price_per_gpu_hour: 1.0,
        },
    );
    for (n, (state, count, class, fabric, runtimes, device_bits)) in seed.nodes.iter().enumerate() {
        let name = format!("n{n}");
        let state = match state % 8 {
            0 => NodeState::Cordoned,
            1 => NodeState::Draining,
            2 => NodeState::NotReady,
            _ => NodeState::Ready,
        };
        let class = CLASSES[*class as usize % 3];
        let devices = (0..*count as u32)
            .map(|index| {
                let bits = device_bits[index as usize];
                let links = (0..*count as u32)
                    .filter(|&peer| peer != index)
                    .filter_map(|peer| match fabric % 3 {
                        0 => None,
                        1 => Some(DeviceLink { peer, fabric: true }),
                        _ => Some(DeviceLink {
                            peer,
                            fabric: peer / 2 == index / 2,
                        }),
                    })
                    .collect();
                let mig = (bits % 7 == 0 && class == "H100").then(|| {
                    (0..2)
                        .map(|k| MigInstance {
                            uuid: format!("{name}-g{index}-m{k}"),
                            hardware_class: "H100-MIG".into(),
                            memory_bytes: 20 * GIB,
                        })
                        .collect()
                });
                Device {
                    uuid: format!("{name}-g{index}"),
                    index,
                    hardware_class: class.into(),
                    memory_bytes: if class == "L4" { 24 * GIB } else { 80 * GIB },
                    other_memory_used_bytes: (bits % 5 == 0).then_some(60 * GIB),
                    health: match bits % 6 {
                        0 => DeviceHealth::Unhealthy,
                        1 => DeviceHealth::Degraded,
                        _ => DeviceHealth::Healthy,
                    },
                    links,
                    mig,
                }
            })
            .collect();
        let runtimes = RUNTIMES
            .iter()
            .enumerate()
            .filter(|(i, _)| runtimes & (1 << i) != 0)
            .map(|(_, r)| r.to_string());
        input.nodes.push(Node {
            name,
            state,
            runtimes: runtimes.collect(),
            devices,
        });
    }
    for (t, (weight, guarantee, limit, dry_run)) in seed.tenants.iter().enumerate() {
        input.tenants.push(Tenant {
            name: format!("t{t}"),
            weight: f64::from(*weight),
            guarantee: f64::from(*guarantee),
            limit: (limit % 3 != 0).then(|| f64::from(*guarantee + limit % 8)),
            quota_mode: if *dry_run {
                QuotaMode::DryRun
            } else {
                QuotaMode::Enforce
            },
        });
    }
    for (d, (tenant, gpus, memory, classes, runtimes, min, extra, linked)) in seed.deployments.iter().enumerate() {
        let allowed: Vec<String> = CLASSES
            .iter()
            .enumerate()
            .filter(|(i, _)| classes & (1 << i) != 0)
            .map(|(_, c)| c.to_string())
            .collect();
        let mut order: Vec<String> = RUNTIMES.iter().map(|r| r.to_string()).collect();
        order.rotate_left(*runtimes as usize % 3);
        order.truncate(1 + (*runtimes as usize / 3) % 3);
        input.deployments.push(Deployment {
            tenant: format!("t{}", *tenant as usize % seed.tenants.len()),
            name: format!("d{d}"),
            created: d as u64,
            gpus_per_replica: u32::from(*gpus),
            gpu_memory_bytes: u64::from(*memory % 90) * GIB,
            allowed_classes: if classes & 0b1000 != 0 { allowed } else { Vec::new() },
            preferred_classes: if classes & 0b1_0000 != 0 {
                vec!["A100".into()]
            } else {
                Vec::new()
            },
            runtimes: order,
            min_replicas: u32::from(*min),
            max_replicas: u32::from(*min + *extra),
            require_linked_gpus: *linked,
        });
    }
    for (r, (deployment, node, first, count, runtime)) in seed.current.iter().enumerate() {
        if input.deployments.is_empty() {
            break;
        }
        let deployment = &input.deployments[*deployment as usize % input.deployments.len()];
        let node = &input.nodes[*node as usize % input.nodes.len()];
        let units: Vec<String> = node
            .devices
            .iter()
            .flat_map(|device| match &device.mig {
                Some(instances) => instances.iter().map(|instance| instance.uuid.clone()).collect(),
                None => vec![device.uuid.clone()],
            })
            .collect();
        let devices = if units.is_empty() {
            Vec::new()
        } else {
            // Mostly the deployment's device count, sometimes a wrong one.
            let count = if count % 4 == 0 {
                u32::from(count / 4 % 3)
            } else {
                deployment.gpus_per_replica
            };
            (0..count)
                .map(|k| units[(*first as usize + k as usize) % units.len()].clone())
                .collect()
        };
        // Mostly a runtime the deployment lists, sometimes any.
        let runtime = if runtime % 4 == 0 {
            RUNTIMES[*runtime as usize / 4 % 3].to_owned()
        } else {
            deployment.runtimes[*runtime as usize % deployment.runtimes.len()].clone()
        };
        input.current.push(Replica {
            name: format!("old-{r}"),
            tenant: deployment.tenant.clone(),
            deployment: deployment.name.clone(),
            node: node.name.clone(),
            devices,
            runtime,
            created: r as u64,
        });
    }
    input
}

/// A homogeneous fleet where every deployment fits every device, integer guarantees that
/// the fleet can hold, and a current placement made before the tenants' demand changed.
#[derive(Debug, Clone)]
struct GuaranteeSeed {
    nodes: Vec<u8>,
    tenants: Vec<(u8, u8, Option<u8>)>,
    deployments: Vec<(u8, u8, u8, bool)>,
}

fn guarantee_seed() -> impl Strategy<Value = GuaranteeSeed> {
    (
        prop::collection::vec(1u8..=8, 1..5),
        prop::collection::vec((1u8..=4, 0u8..=8, prop::option::of(0u8..=8)), 2..5),
        prop::collection::vec((any::<u8>(), 0u8..=3, 0u8..=8, any::<bool>()), 1..9),
    )
        .prop_map(|(nodes, tenants, deployments)| GuaranteeSeed {
            nodes,
            tenants,
            deployments,
        })
}

/// The full input, and the earlier one (the deployments flagged `early` only) whose
/// placement becomes the full input's current.
fn build_guarantee_case(seed: &GuaranteeSeed) -> (PlacementInput, PlacementInput) {
    let mut input = PlacementInput::default();
    for (n, count) in seed.nodes.iter().enumerate() {
        let devices = (0..u32::from(*count))
            .map(|index| Device {
                uuid: format!("n{n}-g{index}"),
                index,
                hardware_class: "H100".into(),
                memory_bytes: 80 * GIB,
                other_memory_used_bytes: None,
                health: DeviceHealth::Healthy,
                links: Vec::new(),
                mig: None,
            })
            .collect();
        input.nodes.push(Node {
            name: format!("n{n}"),
            state: NodeState::Ready,
            runtimes: vec!["vllm".into()],
            devices,
        });
    }
    let capacity: u32 = seed.nodes.iter().map(|&count| u32::from(count)).sum();
    let mut left = capacity;
    for (t, (weight, guarantee, extra)) in seed.tenants.iter().enumerate() {
        let guarantee = u32::from(*guarantee).min(left);
        left -= guarantee;
        input.tenants.push(Tenant {
            name: format!("t{t}"),
            weight: f64::from(*weight),
            guarantee: f64::from(guarantee),
            limit: extra.map(|extra| f64::from(guarantee + u32::from(extra))),
            quota_mode: QuotaMode::Enforce,
        });
    }
    for (d, (tenant, min, extra, _)) in seed.deployments.iter().enumerate() {
        input.deployments.push(Deployment {
            tenant: format!("t{}", *tenant as usize % seed.tenants.len()),
            name: format!("d{d}"),
            created: d as u64,
            gpus_per_replica: 1,
            gpu_memory_bytes: 10 * GIB,
            allowed_classes: Vec::new(),
            preferred_classes: Vec::new(),
            runtimes: vec!["vllm".into()],
            min_replicas: u32::from(*min),
            max_replicas: u32::from(*min + *extra),
            require_linked_gpus: false,
        });
    }
    let mut early = input.clone();
    early.deployments = input
        .deployments
        .iter()
        .zip(&seed.deployments)
        .filter(|(_, seed)| seed.3)
        .map(|(d, _)| d.clone())
        .collect();
    (input, early)
}

proptest! {
    // 512 cases unless PROPTEST_CASES says otherwise (for long local runs).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// No device twice; nothing on an unhealthy, unschedulable or ineligible device; limits
    /// respected; a second pass changes nothing.
    #[test]
    fn placements_are_valid_and_stable(seed in seed()) {
        let input = build(&seed);
        let placement = place(&input).unwrap();
        let problems = invariant_violations(&input, &placement);
        prop_assert!(problems.is_empty(), "{problems:?}\n{}", render(&placement));
        let problems = idempotence_violations(&input, &placement);
        prop_assert!(problems.is_empty(), "{problems:?}\n{}", render(&placement));
    }

    /// Every tenant ends with at least min(guarantee, demand) when the fleet can hold all
    /// guarantees, whatever was placed before; and a second pass changes nothing.
    #[test]
    fn guarantees_are_met(seed in guarantee_seed()) {
        let (input, early) = build_guarantee_case(&seed);
        let before = place(&early).unwrap();
        let mut now = input.clone();
        now.current = before.replicas.clone();
        now.next_sequence = before.next_sequence;
        let placement = place(&now).unwrap();
        let problems = invariant_violations(&now, &placement);
        prop_assert!(problems.is_empty(), "{problems:?}\n{}", render(&placement));
        let problems = idempotence_violations(&now, &placement);
        prop_assert!(problems.is_empty(), "{problems:?}\n{}", render(&placement));
        for tenant in &input.tenants {
            let demand: u32 = input
                .deployments
                .iter()
                .filter(|deployment| deployment.tenant == tenant.name)
                .map(|deployment| deployment.max_replicas)
                .sum();
            let wanted = tenant.guarantee.min(f64::from(demand));
            let share = placement.tenants.iter().find(|share| share.tenant == tenant.name).unwrap();
            prop_assert!(
                share.usage + 1e-9 >= wanted,
                "tenant {} holds {} < min(guarantee {}, demand {})\n{}",
                tenant.name, share.usage, tenant.guarantee, demand, render(&placement)
            );
        }
    }
}
