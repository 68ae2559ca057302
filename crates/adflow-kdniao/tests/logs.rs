//! Secrets never appear in logs: every tracing event emitted while the receiver rejects a
//! bad sign, while a wrong key is rejected by the stand-in, and while failing over, is
//! captured and searched for the keys.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use adflow_kdniao::client::WaybillRequest;
use adflow_kdniao::config::{Endpoints, KdniaoConfig, Kuaidi100Config};
use adflow_kdniao::error::Provider;
use adflow_kdniao::receiver::{serve, ReceiverState};
use adflow_kdniao::sandbox::{FailMode, PushCommand, Sandbox, SandboxKuaidi100, SandboxScript};
use adflow_kdniao::sink::{FilePublisher, TrackSink};
use adflow_kdniao::tracker::Tracker;
use adflow_kdniao::Secret;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const KEY: &str = "kdniao-app-key-SECRET-42";
const K100_KEY: &str = "kuaidi100-key-SECRET-43";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Line<'a>(&'a mut String);
impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut s = String::new();
        span.record(&mut Line(&mut s));
        self.0.lock().unwrap().push_str(&s);
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut s = String::new();
        values.record(&mut Line(&mut s));
        self.0.lock().unwrap().push_str(&s);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut s = format!("\n{}", event.metadata().level());
        event.record(&mut Line(&mut s));
        self.0.lock().unwrap().push_str(&s);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn keys_never_reach_the_logs() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let dir = tempfile::tempdir().unwrap();
    let sb = Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        "1",
        Secret::new(KEY),
        SandboxScript {
            kuaidi100: Some(SandboxKuaidi100 {
                customer: "C".into(),
                key: Secret::new(K100_KEY),
            }),
            ..SandboxScript::default()
        },
    )
    .await
    .unwrap();

    // Receiver rejecting a bad sign.
    let out = dir.path().join("out");
    let sink = Arc::new(
        TrackSink::open(Arc::new(FilePublisher::new(&out).unwrap()), &out.join(".s")).unwrap(),
    );
    let state = ReceiverState::new("1".into(), Secret::new(KEY), sink);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let (_, reply) = sb
        .push(PushCommand {
            callback_url: Some(url),
            bad_sign: true,
            ..PushCommand::default()
        })
        .await
        .unwrap();
    assert!(reply.contains("\"Success\":false"));

    // Client with a wrong key (alert), then failover with the right one.
    let mut cfg = KdniaoConfig::new("1", Secret::new("wrong-SECRET-44"));
    cfg.endpoints = Some(Endpoints::single(&sb.kdniao_url()));
    cfg.http.retries = 1;
    cfg.http.retry_delay_ms = 1;
    cfg.http.timeout_ms = 200;
    let tracker = Tracker::new(&cfg, &dir.path().join("a")).unwrap();
    let err = tracker
        .query(&WaybillRequest::new("EMS", "E1"))
        .await
        .unwrap_err();
    cfg.app_key = Secret::new(KEY);
    cfg.kuaidi100 = Some(Kuaidi100Config {
        customer: "C".into(),
        key: Secret::new(K100_KEY),
        url: sb.kuaidi100_url(),
        rate_limit_per_sec: 100.0,
        carriers: Default::default(),
    });
    sb.set_fail(Provider::Kdniao, FailMode::Http500);
    let tracker = Tracker::new(&cfg, &dir.path().join("b")).unwrap();
    let (provider, _) = tracker
        .query(&WaybillRequest::new("EMS", "E1"))
        .await
        .unwrap();
    assert_eq!(provider, Provider::Kuaidi100);

    let logs = capture.0.lock().unwrap().clone();
    assert!(
        logs.contains("push rejected: DataSign does not verify"),
        "{logs}"
    );
    assert!(logs.contains("alert=true"), "{logs}");
    assert!(logs.contains("failing over to kuaidi100"), "{logs}");
    let everything = format!("{logs}\n{err}\n{err:?}\n{cfg:?}\n{tracker:?}");
    for secret in [KEY, K100_KEY, "wrong-SECRET-44"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}
