use super::*;

fn parse(format: Format, body: &str, chunk: usize) -> Body {
    let mut parser = Parser::new(format, &["team".to_string()]);
    for piece in body.as_bytes().chunks(chunk) {
        parser.feed(piece).expect("valid");
    }
    parser.finish().expect("valid")
}

impl Body {
    fn lines_of<'a>(&'a self, family: &'a Family) -> Vec<&'a Line> {
        family.lines(self).collect()
    }
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
        assert_eq!(text.lines_of(t)[0].timestamp, Some(1_700_000_000.0), "text timestamps are ms");
        assert_eq!((text.lines_of(t)[0].clash, text.lines_of(t)[1].clash), (0, 1), "the sample with `team` is marked");
        assert_eq!(o.len(), 2, "exemplar dropped, _created kept");
        assert_eq!(om.text(om.lines_of(o)[0].value.0, om.lines_of(o)[0].value.1), "7");
        assert_eq!(family(&text, "latency").len(), 4);
        assert_eq!(family(&text, "untyped_thing").kind, Kind::Unknown);
        assert!(!text.lines_of(family(&text, "empty_braces"))[0].has_labels);
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
    // Bytes that are not UTF-8 are named at their line, whether they arrive in the chunk that
    // ends the line, split across chunks, or on a last line without a newline.
    for chunk in [1, 3, 64] {
        for body in [&b"ok 1\nok 2\nm{a=\"\xff\"} 1\nok 3\n"[..], b"ok 1\nok 2\nm{a=\"\xc3"] {
            let mut parser = Parser::new(Format::Text, &[]);
            let error = body
                .chunks(chunk)
                .try_for_each(|piece| parser.feed(piece))
                .and_then(|()| parser.finish().map(|_| ()))
                .expect_err("not UTF-8");
            assert_eq!((error.line, error.message.as_str()), (3, "not UTF-8"), "{body:?} in chunks of {chunk}");
        }
    }
}

/// The one-pass reader of common sample lines and the careful reader agree on every line the
/// first accepts, and the first accepts the lines bodies are made of. The lines are built from
/// fragments chosen to sit on each boundary (escapes, odd spacing, exemplars, special values,
/// timestamps, identity labels, limits), every combination up to a depth, plus a corpus.
#[test]
fn the_fast_reader_agrees_with_the_careful_one() {
    let names = ["m", "http_requests_total", "a:b_c9", "9bad", "m-x", "_x"];
    let blocks = [
        "",
        "{}",
        "{a=\"1\"}",
        "{a=\"1\",}",
        "{team=\"x\",route=\"/r\"}",
        "{instance=\"i\",target=\"t\"}",
        "{a=\"q\\\"uote\\\\ \\n\"}",
        "{a=\"bad\\x\"}",
        "{a=\"}\"}",
        "{ a=\"1\" }",
        "{a = \"1\"}",
        "{a=\"1\" ,b=\"2\"}",
        "{1a=\"x\"}",
        "{a=1}",
        "{a=\"unterminated}",
        "{a=\"é\"}",
        "{a=\"1\"b=\"2\"}",
        "{long_label_name_over_the_limit=\"1\"}",
        "{a=\"a value longer than the limit\"}",
        "{a=\"1\",b=\"2\",c=\"3\",d=\"4\"}",
    ];
    let tails = [
        " 1",
        " -1.5",
        " 1e3",
        " NaN",
        " +Inf",
        " -Inf",
        " Inf",
        " nan",
        " inf",
        " 1 1700000000000",
        " 1 -5",
        " 1 NaN",
        " 1 1.5",
        "  1",
        "\t1",
        " 1 ",
        " 1 2 3",
        " 1 # {trace=\"a\"} 1 2",
        " abc",
        " ",
        "",
        " 1#x",
        " 0x10",
        " .5",
        " 5.",
        " +1",
    ];
    let limits = Limits { samples: 0, labels: 3, label_name_length: 16, label_value_length: 16 };
    let identity = ["target".to_string(), "instance".to_string(), "team".to_string()];
    let (mut fast, mut lines) = (0, 0);
    for format in [Format::Text, Format::OpenMetrics] {
        for name in names {
            for block in blocks {
                for tail in tails {
                    let line = format!("{name}{block}{tail}");
                    let mut parser = Parser::new(format, &identity).with_limits(limits);
                    parser.bytes = line.clone().into_bytes();
                    let careful = parser.parse_sample(&line, 0);
                    lines += 1;
                    if let Some(read) = parser.fast_sample(0, line.len()) {
                        fast += 1;
                        assert_eq!(careful.as_ref(), Ok(&read), "{line:?} in {format:?}");
                    }
                }
            }
        }
    }
    // The common shapes are the fast reader's: at least every valid name with a plain block
    // and a plain value.
    assert!(fast > lines / 10, "{fast} of {lines} lines read fast");
    let mut parser = Parser::new(Format::Text, &identity);
    for line in ["m{a=\"1\",team=\"x\"} 2", "m 1 1700000000000", "m{} NaN", "m{a=\"\\\"\"} -3.25"] {
        parser.bytes = line.as_bytes().to_vec();
        assert!(parser.fast_sample(0, line.len()).is_some(), "{line:?} is a common line");
    }
}
