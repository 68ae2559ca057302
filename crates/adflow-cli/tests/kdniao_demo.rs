//! `scripts/demo-kdniao.sh` end to end (no broker: the stand-in Kdniao server pushes a
//! generated data set's track sequences to the receiver, which writes logistics.jsonl): the
//! pipeline's tables via the connector equal those on the generated logistics file, except the
//! logistics dead letters (the connector never emits a malformed line). Needs bash and curl
//! (which `make test` installs for ClickHouse anyway).

use adflow_model::output::{AnomalyRow, OrderStatusRow};
use adflow_model::{OutputRow, Table};
use adflow_reference::{diff, read_changelog_dir, Tables};
use std::path::Path;
use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The tables without the `dead_letters` rows of `stream`.
fn without_dead_letters_of(mut t: Tables, stream: &str) -> Tables {
    if let Some(rows) = t.get_mut(&Table::DeadLetters) {
        rows.retain(|r| !matches!(r, OutputRow::DeadLetter(d) if d.stream == stream));
    }
    t
}

#[test]
fn demo_via_the_connector_gives_the_file_modes_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/demo-kdniao.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("BIN", env!("CARGO_BIN_EXE_adflow"))
        .env("DEMO_DIR", &dir)
        .env("SEED", "11")
        .env("USERS", "250")
        .env("DAYS", "5")
        .env("WORKERS", "1")
        .env("RECV_PORT", free_port().to_string())
        .env("SANDBOX_PORT", free_port().to_string())
        .env("COMPARE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo-kdniao.sh failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("-- orders by delivery"), "{stdout}");
    assert!(stderr.contains("not accepted: 0"), "{stderr}");

    // The receiver wrote every well-formed, distinct track of the generated file.
    let connector = std::fs::read_to_string(dir.join("connector/logistics.jsonl")).unwrap();
    assert!(connector.lines().all(|l| l.contains("\"event_id\":\"kdn-")));
    let logs = std::fs::read_to_string(dir.join("logs/receiver.log")).unwrap()
        + &std::fs::read_to_string(dir.join("logs/sandbox.log")).unwrap();
    // The script's AppKey is `demo-` + 32 hex digits; it must not be in any log.
    let leaked = logs.match_indices("demo-").any(|(i, _)| {
        let rest: String = logs[i + 5..].chars().take(32).collect();
        rest.len() == 32 && rest.chars().all(|c| c.is_ascii_hexdigit())
    });
    assert!(!leaked, "the AppKey leaked into the logs");

    let via = read_changelog_dir(&dir.join("out")).unwrap();
    let file = read_changelog_dir(&dir.join("out-file")).unwrap();

    // The logistics-derived tables are not trivially empty.
    let statuses: Vec<&OrderStatusRow> = via[&Table::OrderStatus]
        .iter()
        .filter_map(|r| match r {
            OutputRow::OrderStatus(o) => Some(o),
            _ => None,
        })
        .collect();
    for delivery in ["signed", "refused", "in_transit"] {
        assert!(
            statuses.iter().any(|o| o.delivery == delivery),
            "no {delivery} order"
        );
    }
    let anomalies: Vec<&AnomalyRow> = via[&Table::Anomalies]
        .iter()
        .filter_map(|r| match r {
            OutputRow::Anomaly(a) => Some(a),
            _ => None,
        })
        .collect();
    for kind in ["stalled_parcel", "delivery_exception"] {
        assert!(
            anomalies.iter().any(|a| a.kind == kind),
            "no {kind} anomaly"
        );
    }
    assert!(!via[&Table::Triggers].is_empty());
    // The file run did see malformed logistics lines; the connector run cannot have any.
    assert!(file[&Table::DeadLetters]
        .iter()
        .any(|r| matches!(r, OutputRow::DeadLetter(d) if d.stream == "logistics")));

    let file = without_dead_letters_of(file, "logistics");
    if let Some(d) = diff(&file, &via) {
        panic!("via the connector differs from the file run:\n{d}");
    }
}
