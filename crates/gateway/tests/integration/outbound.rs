//! What the gateway sends where: only the credential an operator bound, only to addresses the
//! policy permits, and no more of an answer than the limits allow.

use std::sync::atomic::Ordering;
use std::time::Duration;

use caracal_core::Mode;
use serde_json::json;

use crate::support::*;

/// A capture server registered as a target (with labels a federation job selects) never sees
/// the metrics bearer, nor any other credential; the platform's own service, at the URL the
/// configuration names, does. A platform name pointed elsewhere gets nothing, and a target
/// naming a credential that is not there is not contacted at all.
#[tokio::test]
async fn no_platform_secret_goes_where_a_caller_pointed() {
    let (attacker, seen) = capture("127.0.0.1").await;
    let (platform, platform_seen) = capture("127.0.0.1").await;
    let (hijacked, hijacked_seen) = capture("127.0.0.1").await;
    let (unbound, unbound_seen) = capture("127.0.0.1").await;
    let dir = tempfile::tempdir().expect("a credentials directory");
    let gw = gateway_with(
        &caracal_testkit::shared().postgres,
        Mode::Rc,
        json!({
            "gateway": {"credentials_dir": dir.path()},
            "api": {"platform": {"api": [platform], "sts": ["http://127.0.0.1:9"]}},
        }),
    )
    .await;
    gw.register_with(
        "attacker",
        json!({"caracal": "platform", "job": "federate"}),
        2_000,
        std::slice::from_ref(&attacker),
        None,
    )
    .await;
    gw.register_with("api", json!({"caracal": "platform"}), 2_000, std::slice::from_ref(&platform), None).await;
    // The platform's name, but an instance the configuration does not name.
    gw.register_with("sts", json!({"caracal": "platform"}), 2_000, &[hijacked], None).await;
    gw.register_with("stolen", json!({}), 2_000, &[unbound], Some("missing-credential")).await;
    let (status, _, body) = gw.federate("/v1/metrics?label=caracal=platform", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = gw.federate("/v1/targets/stolen/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    let all = samples(&body);
    assert_eq!(
        value(&all, "caracal_federation_error", &[("target", "stolen"), ("reason", "credential")]).as_deref(),
        Some("1"),
        "{body}"
    );
    let requests = seen.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1, "the attacker's target was scraped once: {requests:?}");
    assert_eq!(requests[0].1, None, "and was presented nothing");
    let hijacked = hijacked_seen.requests.lock().expect("lock").clone();
    assert_eq!(hijacked.len(), 1);
    assert_eq!(hijacked[0].1, None, "a platform name with another URL gets nothing");
    let platform = platform_seen.requests.lock().expect("lock").clone();
    assert_eq!(platform.len(), 1);
    assert_eq!(platform[0].1.as_deref(), Some(format!("Bearer {BEARER}").as_str()), "the platform's own service");
    assert_eq!(unbound_seen.connections.load(Ordering::SeqCst), 0, "a missing credential: never contacted");
}

/// Denied addresses are never contacted: a literal (the cloud metadata address) and a name
/// resolving into a denied range each fail as `address_denied`.
#[tokio::test]
async fn denied_addresses_are_never_contacted() {
    let (local, seen) = capture("127.0.0.1").await;
    let port = local.rsplit(':').next().expect("a port").to_string();
    let gw = gateway_core(&caracal_testkit::shared().postgres, Mode::Rc, json!({}), |core| {
        core.outbound.deny.extend([
            "127.0.0.0/8".parse::<caracal_core::outbound::IpNet>().expect("a range"),
            "::1/128".parse::<caracal_core::outbound::IpNet>().expect("a range"),
        ]);
    })
    .await;
    gw.register_with("metadata", json!({}), 1_000, &["http://169.254.169.254".into()], None).await;
    gw.register_with("by-name", json!({}), 1_000, &[format!("http://localhost:{port}")], None).await;
    gw.register_with("by-literal", json!({}), 1_000, &[local], None).await;
    for name in ["metadata", "by-name", "by-literal"] {
        let (status, _, body) = gw.federate(&format!("/v1/targets/{name}/metrics"), &[]).await;
        assert_eq!(status, 200, "{body}");
        let all = samples(&body);
        assert_eq!(
            value(&all, "caracal_federation_error", &[("reason", "address_denied")]).as_deref(),
            Some("1"),
            "{name}: {body}"
        );
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0, "nothing reached the denied address");
}

/// Each limit fails its instance with its own reason while the others are federated, and a
/// body far over the sample limit is cut off as soon as it is crossed.
#[tokio::test]
async fn samples_and_labels_over_the_limits_fail_the_instance_by_name() {
    let gw = gateway(json!({
        "sample_limit": 1000, "label_limit": 3, "label_name_length_limit": 20, "label_value_length_limit": 30
    }))
    .await;
    let many = "a_sample 1\n".repeat(3_000_000);
    let cases = [
        ("many", many),
        ("labels", "m{a=\"1\",b=\"2\",c=\"3\",d=\"4\"} 1\n".to_string()),
        ("name", format!("m{{{}=\"1\"}} 1\n", "n".repeat(21))),
        ("value", format!("m{{a=\"{}\"}} 1\n", "v".repeat(31))),
        ("escaped", format!("m{{a=\"{}\"}} 1\n", "\\\"".repeat(30))),
        ("fine", "m{a=\"1\",b=\"2\",c=\"3\"} 1\n".repeat(1000)),
    ];
    let mut urls = Vec::new();
    for (name, body) in &cases {
        let url = instance(Behaviour::Text(body.clone()), BEARER).await;
        gw.register(name, json!({}), 5_000, std::slice::from_ref(&url)).await;
        urls.push(url);
    }
    let expected = [
        ("many", Some("sample_limit")),
        ("labels", Some("label_limit")),
        ("name", Some("label_name_length_limit")),
        ("value", Some("label_value_length_limit")),
        ("escaped", None),
        ("fine", None),
    ];
    for (name, reason) in expected {
        let started = std::time::Instant::now();
        let (status, _, body) = gw.federate(&format!("/v1/targets/{name}/metrics"), &[]).await;
        assert_eq!(status, 200);
        let all = samples(&body);
        let error = all.iter().find(|(n, _, _)| n == "caracal_federation_error");
        let got = error.and_then(|(_, labels, _)| labels.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.as_str()));
        assert_eq!(got, reason, "{name}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }
}

/// A target with 32 labels of 256 characters makes the answer ten times its bodies: it is
/// streamed, every sample present with every label.
#[tokio::test]
async fn a_large_answer_is_streamed_whole() {
    let gw = gateway(json!({})).await;
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..32).map(|i| (format!("l{i:02}"), json!("x".repeat(256)))).collect();
    let url = instance(Behaviour::Text("s{i=\"1\"} 1\n".repeat(20_000)), BEARER).await;
    gw.register("wide", serde_json::Value::Object(labels), 5_000, &[url]).await;
    let (status, _, body) = gw.federate("/v1/targets/wide/metrics?only_target_metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.len() > 20_000 * 32 * 256, "{} bytes", body.len());
    let all = samples(&body);
    assert_eq!(all.len(), 20_000);
    assert!(all.iter().all(|(_, labels, _)| labels.len() == 35), "i, target, instance and 32 labels each");
}

/// A credential mounted as Kubernetes mounts a Secret (the name a link into `..data`, itself a
/// link to a timestamped directory) follows a rotation: the new token is presented once the
/// links swap and the old directory is gone.
#[tokio::test]
async fn a_rotated_credential_is_presented_after_the_swap() {
    let dir = tempfile::tempdir().expect("a credentials directory");
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).expect("v1");
    std::fs::write(root.join("..v1/rotating"), "rotated-1\n").expect("write");
    std::os::unix::fs::symlink("..v1", root.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/rotating", root.join("rotating")).expect("the name");
    let gw = gateway(json!({"credentials_dir": root})).await;
    let url = instance(Behaviour::Text("rotated 1\n".into()), "rotated-2").await;
    gw.register_with("rotating", json!({}), 2_000, &[url], Some("rotating")).await;
    let reason = |body: &str| {
        let all = samples(body);
        all.iter()
            .find(|(n, _, _)| n == "caracal_federation_error")
            .and_then(|(_, labels, _)| labels.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.clone()))
    };
    let (_, _, body) = gw.federate("/v1/targets/rotating/metrics", &[]).await;
    assert_eq!(reason(&body).as_deref(), Some("status"), "the old token is refused: {body}");
    std::fs::create_dir(root.join("..v2")).expect("v2");
    std::fs::write(root.join("..v2/rotating"), "rotated-2\n").expect("write");
    std::os::unix::fs::symlink("..v2", root.join("..data.tmp")).expect("link");
    std::fs::rename(root.join("..data.tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..v1")).expect("the old one goes");
    let (_, _, body) = gw.federate("/v1/targets/rotating/metrics", &[]).await;
    assert_eq!(reason(&body), None, "the new token is presented: {body}");
}
