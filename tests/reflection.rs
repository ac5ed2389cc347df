//! gRPC reflection as clients that only speak v1alpha meet it: Python's
//! grpcio-reflection (`tests/python/reflection_client.py`) lists each
//! listener's services and calls Authorize with descriptors it fetched by
//! reflection, against a real `tollgate serve`. (v1 is tested in
//! tests/listener.rs with tonic's client.)

mod support;

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};
use support::{quickstart, TollgateProcess, ADMIN_TOKEN, DEMO_KEY};

/// Runs the Python client against `addr` (and, with `request`, Authorize).
fn python_client(addr: SocketAddr, request: Option<Value>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reflection_client.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(addr.to_string());
    if let Some(r) = request {
        cmd.arg(r.to_string());
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python reflection client failed (grpcio and grpcio-reflection missing? \
         `python3 -m pip install grpcio grpcio-reflection`, which scripts/test does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn services(v: &Value) -> Vec<&str> {
    v["services"].as_array().unwrap().iter().filter_map(Value::as_str).collect()
}

#[test]
fn a_v1alpha_client_lists_each_listeners_services_and_calls_authorize() {
    let config = quickstart();
    let p = TollgateProcess::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );

    let request = json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": "/pets/GET"});
    let data_plane = python_client(p.addr, Some(request));
    let names = services(&data_plane);
    for s in [
        "tollgate.v1.Authorizer",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&s), "{s} in {names:?}");
    }
    assert!(!names.contains(&"tollgate.v1.Admin"), "the data plane lists no Admin: {names:?}");
    let answer = &data_plane["authorize"];
    assert_eq!((answer["allowed"].as_bool(), answer["reason"].as_str()), (Some(true), Some("OK")), "{answer}");
    assert_eq!(answer["plan_id"], "basic", "{answer}");

    let admin = python_client(p.admin_addr(), None);
    let names = services(&admin);
    assert!(names.contains(&"tollgate.v1.Admin") && names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(!names.contains(&"tollgate.v1.Authorizer"), "the Admin listener lists only its own: {names:?}");
}
