//! `paylake pull fraud_labels` against a scripted HTTP server on 127.0.0.1.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{source, Workspace};
use serde_json::{json, Value};

/// What the server does with one request.
#[derive(Clone)]
enum Reply {
    /// A complete answer.
    Status(u16, String),
    /// A 200 whose body breaks off half-way (the connection closes early).
    Truncated(String),
    /// No answer for this long, then the connection closes.
    Silence(Duration),
}

fn page(items: &[Value], next: Option<&str>) -> Reply {
    Reply::Status(
        200,
        json!({"items": items, "next_cursor": next}).to_string(),
    )
}

fn label(id: &str) -> Value {
    json!({"payment_id": id, "fraud_type": "money_mule", "fraud_reported_date": "2025-01-02"})
}

/// Each request's first line and its Authorization header, in arrival order.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A one-connection-at-a-time HTTP/1.1 server answering from a script, recording each request
/// line and its Authorization header.
struct Server {
    url: String,
    requests: RequestLog,
}

impl Server {
    fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/labels", listener.local_addr().unwrap());
        let requests: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let reply = script
                    .next()
                    .unwrap_or_else(|| Reply::Status(500, "script exhausted".into()));
                serve(stream, reply, &seen);
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, reply: Reply, seen: &Mutex<Vec<(String, Option<String>)>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    seen.lock()
        .unwrap()
        .push((request_line.trim().to_string(), authorization));
    let respond = |stream: &mut TcpStream, status: u16, body: &str, sent: usize| {
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body.as_bytes()[..sent]);
        let _ = stream.flush();
    };
    match reply {
        Reply::Status(status, body) => respond(&mut stream, status, &body, body.len()),
        Reply::Truncated(body) => respond(&mut stream, 200, &body, body.len() / 2),
        Reply::Silence(duration) => {
            std::thread::sleep(duration);
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

fn pull(ws: &Workspace, url: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::fs::create_dir_all(ws.landing()).unwrap();
    let landing = ws.landing();
    let mut args = vec![
        "pull",
        "fraud_labels",
        "--url",
        url,
        "--landing",
        landing.to_str().unwrap(),
        "--backoff",
        "10ms",
        "--timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    ws.run_with_env(&args, env)
}

/// Every file in the API folder, with its content.
fn pages(landing: &Path) -> Vec<(String, String)> {
    let folder = landing.join("fraud_labels/api");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&folder)
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn text(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn retries_a_500_a_timeout_and_a_truncated_page_then_lands_every_page_once() {
    let first = vec![label("PAY1"), label("PAY2")];
    let second = vec![label("PAY3")];
    let server = Server::start(vec![
        Reply::Status(503, "busy".into()),
        page(&first, Some("c1")),
        Reply::Truncated(json!({"items": second, "next_cursor": null}).to_string()),
        Reply::Silence(Duration::from_secs(3)),
        page(&second, None),
        // The next pull, from the same API (the pull state belongs to one URL).
        page(&[], None),
    ]);
    let ws = Workspace::new();
    let started = chrono::Utc::now();
    let output = pull(&ws, &server.url, &["--token", "s3cr3t-token"], &[]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("pages 2 (2 written, 0 empty)  items 3  retries 3"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));

    let requests = server.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    assert!(
        requests[0].0.starts_with("GET /v1/labels HTTP/1.1"),
        "{requests:?}"
    );
    assert!(
        requests[2].0.starts_with("GET /v1/labels?cursor=c1 "),
        "{requests:?}"
    );
    assert!(requests
        .iter()
        .all(|(_, auth)| auth.as_deref() == Some("Bearer s3cr3t-token")));

    let files = pages(&ws.landing());
    assert_eq!(
        files.len(),
        2,
        "only whole pages, no temporary files: {files:?}"
    );
    assert_eq!(
        files.iter().filter(|(_, t)| t.lines().count() == 2).count(),
        1
    );
    for (name, content) in &files {
        assert!(
            name.starts_with("labels_") && name.ends_with(".jsonl"),
            "{name}"
        );
        for line in content.lines() {
            serde_json::from_str::<Value>(line).expect("every line is a whole JSON object");
        }
    }

    // Bronze lands the pages like any file, known at their fetch time.
    let summary = ws.bronze();
    assert_eq!(source(&summary, "fraud_labels")["rows_landed"], 3);
    let known = ws.query(
        "SELECT CAST(min(date_part('epoch', _known_at)) AS BIGINT) AS first, \
         CAST(max(date_part('epoch', _known_at)) AS BIGINT) AS last FROM bronze.fraud_labels",
    );
    let window = started.timestamp() - 1..=chrono::Utc::now().timestamp();
    assert!(
        window.contains(&known[0]["first"].as_i64().unwrap()),
        "{known:?}"
    );
    assert!(
        window.contains(&known[0]["last"].as_i64().unwrap()),
        "{known:?}"
    );

    // The next pull asks only for what is new since the last complete one.
    let output = pull(&ws, &server.url, &[], &[]);
    assert!(output.status.success(), "{:?}", text(&output));
    let requests = server.requests();
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert!(requests[5].0.contains("?since="), "{requests:?}");
    assert_eq!(
        pages(&ws.landing()).len(),
        2,
        "an empty page writes no file"
    );
}

#[test]
fn a_4xx_stops_at_once_with_exit_2_and_writes_nothing() {
    let server = Server::start(vec![Reply::Status(
        401,
        r#"{"error": "token expired"}"#.into(),
    )]);
    let ws = Workspace::new();
    let output = pull(&ws, &server.url, &["--token", "old-token-value"], &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("token expired"),
        "{stderr}"
    );
    assert!(!stderr.contains("old-token-value"), "{stderr}");
    assert_eq!(server.requests().len(), 1, "a 4xx is not retried");
    assert!(pages(&ws.landing()).is_empty());

    // A server that keeps failing: given up after --attempts, exit 1, nothing written.
    let server = Server::start(vec![
        Reply::Status(500, "down".into()),
        Reply::Status(502, "down".into()),
    ]);
    let output = pull(&ws, &server.url, &["--attempts", "2"], &[]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gave up after 2 attempt(s)"), "{stderr}");
    assert!(pages(&ws.landing()).is_empty());
}

#[test]
fn a_crash_between_pages_resumes_from_the_cursor_saved_in_the_lake() {
    let ws = Workspace::new();
    let one = vec![label("PAY1")];
    let two = vec![label("PAY2")];
    let three = vec![label("PAY3"), label("PAY4")];
    let server = Server::start(vec![
        page(&one, Some("c1")),
        page(&two, Some("c2")),
        page(&three, None),
    ]);
    let crashed = pull(
        &ws,
        &server.url,
        &["--since", "2025-01-01T00:00:00Z"],
        &[("PAYLAKE_PULL_ABORT_AFTER_PAGES", "2")],
    );
    assert!(
        !crashed.status.success(),
        "the test hook aborts the process"
    );
    assert_eq!(pages(&ws.landing()).len(), 2);
    let state: Value =
        serde_json::from_slice(&std::fs::read(ws.lake().join("_pull/fraud_labels.json")).unwrap())
            .unwrap();
    assert_eq!(state["next_cursor"], "c2", "{state}");
    assert_eq!(state["since"], "2025-01-01T00:00:00Z", "{state}");

    let resumed = pull(&ws, &server.url, &[], &[]);
    let (stdout, stderr) = text(&resumed);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("resumed at cursor c2"), "{stdout}");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests[2]
            .0
            .starts_with("GET /v1/labels?since=2025-01-01T00%3A00%3A00Z&cursor=c2 "),
        "{requests:?}"
    );
    assert_eq!(pages(&ws.landing()).len(), 3);
    let summary = ws.bronze();
    assert_eq!(source(&summary, "fraud_labels")["rows_landed"], 4);
    let state: Value =
        serde_json::from_slice(&std::fs::read(ws.lake().join("_pull/fraud_labels.json")).unwrap())
            .unwrap();
    assert_eq!(state["next_cursor"], Value::Null, "{state}");
}
