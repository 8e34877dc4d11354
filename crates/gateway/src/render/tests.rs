use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::exposition::Parser;

fn parsed(format: Format, body: &str) -> Body {
    let names: Vec<String> = identity(&shop(), "h:1").into_iter().map(|(k, _)| k).collect();
    let mut parser = Parser::new(format, &names);
    parser.feed(body.as_bytes()).expect("valid");
    parser.finish().expect("valid")
}

fn result(target: &Arc<TargetInfo>, instance: &str, outcome: Result<Body, Reason>) -> InstanceResult {
    InstanceResult {
        target: Arc::clone(target),
        instance: instance.into(),
        scraped: Scraped { outcome, duration: Duration::from_millis(5) },
    }
}

fn shop() -> Arc<TargetInfo> {
    Arc::new(TargetInfo {
        name: "shop".into(),
        labels: BTreeMap::from([("team".into(), "pay".into())]),
        metrics_path: "/metrics".into(),
        timeout: Duration::from_secs(1),
        instances: vec![],
        credential: None,
    })
}

#[test]
fn merges_both_formats_with_identity_labels_and_renames_clashes() {
    let target = shop();
    let text = "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total{code=\"200\",team=\"web\"} 5\n";
    let om = "# TYPE reqs counter\nreqs_total{code=\"200\"} 7\nreqs_created{code=\"200\"} 1.5e9\n# EOF\n";
    let results = vec![
        result(&target, "10.0.0.1:80", Ok(parsed(Format::Text, text))),
        result(&target, "10.0.0.2:80", Ok(parsed(Format::OpenMetrics, om))),
        result(&target, "10.0.0.3:80", Err(Reason::Timeout)),
    ];
    let options = Options { format: Format::Text, only_target_metrics: false, matchers: vec![] };
    let (body, merged) = render(&results, &options);
    let body = String::from_utf8(body).expect("utf-8");
    assert_eq!(merged, 2, "the text answer leaves _created out");
    assert_eq!(body.matches("# TYPE reqs_total counter").count(), 1, "{body}");
    assert!(
        body.contains(
            "reqs_total{code=\"200\",team=\"web\",target=\"shop\",instance=\"10.0.0.1:80\",exported_team=\"pay\"} 5\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("reqs_total{code=\"200\",target=\"shop\",instance=\"10.0.0.2:80\",team=\"pay\"} 7\n"),
        "{body}"
    );
    assert!(!body.contains("reqs_created"), "text has no _created");
    assert!(body.contains("caracal_federation_up{target=\"shop\",instance=\"10.0.0.3:80\"} 0\n"));
    assert!(body.contains("caracal_federation_error{target=\"shop\",instance=\"10.0.0.3:80\",reason=\"timeout\"} 1\n"));
    let families: Vec<&str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap_or("")).collect();
    let mut sorted = families.clone();
    sorted.sort_unstable();
    assert_eq!(families, sorted, "families in name order");

    let om_options = Options { format: Format::OpenMetrics, only_target_metrics: true, matchers: vec![] };
    let (om_body, _) = render(&results, &om_options);
    let om_body = String::from_utf8(om_body).expect("utf-8");
    assert!(om_body.starts_with("# TYPE reqs counter\n# HELP reqs Requests.\n"), "{om_body}");
    assert!(
        om_body.contains("reqs_created{code=\"200\",target=\"shop\",instance=\"10.0.0.2:80\",team=\"pay\"} 1.5e9\n")
    );
    assert!(om_body.ends_with("# EOF\n") && !om_body.contains("caracal_federation"));
}

#[test]
fn match_keeps_only_the_named_families() {
    let target = shop();
    let body = "# TYPE a gauge\na 1\n# TYPE b_total counter\nb_total 2\n# TYPE c gauge\nc 3\n";
    let results = vec![result(&target, "h:1", Ok(parsed(Format::Text, body)))];
    let matchers = vec![regex::Regex::new("^(?:a|b_total)$").expect("regex")];
    let options = Options { format: Format::Text, only_target_metrics: true, matchers };
    let (out, merged) = render(&results, &options);
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(merged, 2);
    assert!(out.contains("\na{") || out.starts_with("# TYPE a gauge\na{"), "{out}");
    assert!(out.contains("b_total{") && !out.contains("\nc{"), "{out}");
}
