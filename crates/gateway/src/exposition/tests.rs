use super::*;

fn parse(format: Format, body: &str, chunk: usize) -> Body {
    let mut parser = Parser::new(format, &["team".to_string()]);
    for piece in body.as_bytes().chunks(chunk) {
        parser.feed(piece).expect("valid");
    }
    parser.finish().expect("valid")
}

fn family<'a>(body: &'a Body, name: &str) -> &'a Family {
    body.families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no family {name}"))
}

const TEXT: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
http_requests_total{method=\"GET\",path=\"/a \\\"b\\\" }\"} 10 1700000000000\nhttp_requests_total{method=\"POST\",team=\"x\"} 2\n\
# TYPE latency histogram\nlatency_bucket{le=\"0.1\"} 1\nlatency_bucket{le=\"+Inf\"} 3\nlatency_sum 0.9\nlatency_count 3\n\
untyped_thing 4\nempty_braces{} 5\n";

const OPENMETRICS: &str = "# TYPE http_requests counter\n# HELP http_requests Requests.\n\
http_requests_total{method=\"GET\"} 7 # {trace_id=\"abc\"} 1 1700000000.5\nhttp_requests_created{method=\"GET\"} 1700000000\n\
# TYPE temperature gauge\n# UNIT temperature celsius\ntemperature 21.5\n# EOF\n";

#[test]
fn text_and_openmetrics_counters_are_the_same_family() {
    for chunk in [1, 7, 4096] {
        let text = parse(Format::Text, TEXT, chunk);
        let om = parse(Format::OpenMetrics, OPENMETRICS, chunk);
        let (t, o) = (family(&text, "http_requests"), family(&om, "http_requests"));
        assert_eq!((t.kind, o.kind), (Kind::Counter, Kind::Counter));
        assert_eq!(t.help.as_deref(), Some("Requests."));
        let samples = text.samples();
        assert_eq!(
            samples[0].1[1],
            ("path".into(), "/a \"b\" }".into()),
            "a `}}` inside a value is not the block's end"
        );
        assert_eq!(t.lines[0].timestamp, Some(1_700_000_000.0), "text timestamps are ms");
        assert_eq!((t.lines[0].clash, t.lines[1].clash), (0, 1), "the sample with `team` is marked");
        assert_eq!(o.lines.len(), 2, "exemplar dropped, _created kept");
        assert_eq!(om.text(o.lines[0].value.0, o.lines[0].value.1), "7");
        assert_eq!(family(&text, "latency").lines.len(), 4);
        assert_eq!(family(&text, "untyped_thing").kind, Kind::Unknown);
        assert!(!family(&text, "empty_braces").lines[0].has_labels);
        assert_eq!(family(&om, "temperature").unit.as_deref(), Some("celsius"));
        assert_eq!(text.samples, 8);
    }
}

#[test]
fn garbage_is_an_error_with_its_line() {
    for (body, line) in [
        ("ok 1\nnot a metric line at all\n", 2),
        ("m{a=\"1\" 2\n", 1),
        ("m{a=1} 2\n", 1),
        ("m{1a=\"x\"} 2\n", 1),
        ("m abc\n", 1),
        ("# TYPE m sometype\n", 1),
        ("\u{0}\u{1}binary", 1),
    ] {
        let mut parser = Parser::new(Format::Text, &[]);
        let error = parser.feed(body.as_bytes()).and_then(|()| parser.finish().map(|_| ())).expect_err(body);
        assert_eq!(error.line, line, "{body:?}: {error}");
    }
    let mut om = Parser::new(Format::OpenMetrics, &[]);
    om.feed(b"m 1\n# EOF\nm 2\n").expect_err("nothing after # EOF");
}
