//! The REST API against a real Unix socket server in this process (control plane with the
//! fake launcher: the real pool and pause gate, no KVM): the life cycle, the error mapping,
//! 60+ malformed or hostile requests that each get a clean 4xx and change nothing, and the
//! OpenAPI document against the router.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use common::TestServer;
use memtide_api::model::{
    BalloonBody, BalloonConfigBody, CreateVmBody, NumaBody, RebalanceBody, ResizeBody, Size,
};
use memtide_api::server::routes::openapi::OPENAPI_JSON;
use memtide_api::server::routes::ROUTES;
use memtide_vmm::control::VmState;
use serde_json::Value;

const M: u64 = 1 << 20;

fn vm(id: &str, memory: u64, hotplug: u64) -> CreateVmBody {
    CreateVmBody {
        id: Some(id.into()),
        kernel: "/nonexistent/vmlinuz".into(),
        initrd: None,
        cmdline: None,
        vcpus: 1,
        memory: None,
        numa: vec![NumaBody {
            guest_numa_id: 0,
            cpus: vec![0],
            memory: Size(memory),
            host_numa_id: 0,
            hotplug_size: Size(hotplug),
        }],
        kernelcore: None,
        movablecore: None,
        cpu_template: None,
        console: None,
        console_socket: None,
        balloon: None,
    }
}

/// What must not change: every VM (uptime left out) and the pool's counters.
fn snapshot(s: &TestServer) -> String {
    let c = s.client();
    let mut vms = serde_json::to_value(c.list_vms().expect("list")).expect("json");
    if let Some(a) = vms.as_array_mut() {
        for v in a {
            v["uptime_secs"] = Value::Null;
        }
    }
    s.plane.pool().pool().drain_all_pages();
    let pool = serde_json::to_value(c.pool().expect("pool")).expect("json");
    format!("{vms}\n{pool}")
}

#[test]
fn life_cycle_over_http() {
    let s = TestServer::start(true);
    let mode = std::fs::metadata(&s.sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    let c = s.client();
    assert_eq!(c.health().expect("health").status, "ok");
    let pool0 = c.pool().expect("pool");
    let a = c.create_vm(&vm("a", 64 * M, 256 * M)).expect("create a");
    assert_eq!((a.state, a.boot_memory), (VmState::Running, 64 * M));
    c.create_vm(&vm("b", 64 * M, 256 * M)).expect("create b");
    assert_eq!(c.list_vms().expect("list").len(), 2);
    let pool1 = c.pool().expect("pool");
    assert_eq!(pool0.free_pages - pool1.free_pages, 128 * M / 4096);

    assert_eq!(
        c.vm_verb("a", "pause").expect("pause").state,
        VmState::Paused
    );
    assert_eq!(
        c.vm_verb("a", "resume").expect("resume").state,
        VmState::Running
    );
    let r = c
        .resize(
            "a",
            &ResizeBody {
                size: Size(64 * M + 200 * M),
                node: None,
                wait_secs: 5,
            },
        )
        .expect("resize");
    assert!(r.complete);
    assert_eq!(r.vm.nodes[0].plugged, 200 * M);
    let m = c
        .rebalance(&RebalanceBody {
            from: "a".into(),
            to: "b".into(),
            size: Size(100 * M),
            from_node: None,
            to_node: None,
            wait_secs: 5,
        })
        .expect("rebalance");
    assert!(m.complete);
    assert_eq!(
        (m.from.nodes[0].plugged, m.to.nodes[0].plugged),
        (100 * M, 100 * M)
    );
    let audit = c.pool_audit().expect("audit");
    assert!(audit.consistent, "{:?}", audit.problems);
    assert_eq!(audit.owned_pages, audit.allocated_pages);
    assert_eq!(audit.owned_pages, (2 * 64 + 200) * M / 4096);

    let metrics = c.metrics().expect("metrics");
    for want in [
        "memtide_vms{state=\"running\"} 2",
        "memtide_vm_memory_bytes{vm=\"a\",node=\"0\",kind=\"plugged\"} 104857600",
        "memtide_vm_memory_bytes{vm=\"b\",node=\"0\",kind=\"boot\"} 67108864",
        "memtide_pool_pages{node=\"0\",zone=\"Movable\",kind=\"managed\"}",
        "memtide_pool_watermark_pages{node=\"0\",zone=\"Normal\",level=\"low\"}",
        "memtide_pool_free_blocks{node=\"0\",zone=\"Movable\",order=\"10\"}",
        "# TYPE memtide_api_responses_total counter",
        "memtide_vm_balloon_events_total{vm=\"a\",counter=\"reported_bytes\"} 0",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let v = line.rsplit(' ').next().unwrap_or("");
        assert!(v.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }

    assert_eq!(
        c.vm_verb("a", "shutdown").expect("stop").state,
        VmState::Stopped
    );
    assert_eq!(
        c.vm_verb("b", "shutdown").expect("stop").state,
        VmState::Stopped
    );
    c.delete_vm("a").expect("delete");
    c.delete_vm("b").expect("delete");
    assert!(c.list_vms().expect("list").is_empty());
    s.plane.pool().pool().drain_all_pages();
    assert_eq!(c.pool().expect("pool").free_pages, pool0.free_pages);
    s.plane.pool().pool().validate().expect("pool consistent");
}

fn status_of(e: memtide_api::client::ClientError) -> u16 {
    match e {
        memtide_api::client::ClientError::Api { status, .. } => status,
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn errors_map_to_their_statuses() {
    let s = TestServer::start(false);
    let c = s.client();
    c.create_vm(&vm("a", 64 * M, 128 * M)).expect("a");
    // 501: no virtio-mem device in this VMM.
    let e = c
        .resize(
            "a",
            &ResizeBody {
                size: Size(128 * M),
                node: None,
                wait_secs: 0,
            },
        )
        .expect_err("no virtio-mem");
    assert!(e.to_string().contains("no virtio-mem device"), "{e}");
    assert_eq!(status_of(e), 501);
    // 503: more boot RAM than the pool's kernel zones hold.
    let e = c.create_vm(&vm("big", 900 * M, 0)).expect_err("exhausted");
    assert_eq!(status_of(e), 503);
    // 409, 404, 422, 400.
    assert_eq!(
        status_of(c.create_vm(&vm("a", 64 * M, 0)).expect_err("dup")),
        409
    );
    assert_eq!(status_of(c.vm("zz").expect_err("404")), 404);
    let mut many = vm("many", 64 * M, 0);
    many.vcpus = 300;
    many.numa.clear();
    many.memory = Some(Size(64 * M));
    assert_eq!(status_of(c.create_vm(&many).expect_err("vcpus")), 422);
    assert_eq!(
        status_of(c.create_vm(&vm("odd", 3 * M, 0)).expect_err("align")),
        400
    );
    assert_eq!(c.list_vms().expect("list").len(), 1);
}

/// `(method, path, content type, body, expected status)`.
type Case = (&'static str, String, Option<&'static str>, Vec<u8>, u16);

fn json_case(method: &'static str, path: &str, body: &str, want: u16) -> Case {
    (
        method,
        path.to_string(),
        Some("application/json"),
        body.as_bytes().to_vec(),
        want,
    )
}

fn bare(method: &'static str, path: &str, want: u16) -> Case {
    (method, path.to_string(), None, Vec::new(), want)
}

fn request(c: &Case) -> Vec<u8> {
    let (method, path, ctype, body, _) = c;
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = ctype {
        r.push_str(&format!("Content-Type: {t}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn balloon_routes_set_and_read_the_target() {
    let s = TestServer::start(true);
    let c = s.client();
    c.create_vm(&vm("a", 64 * M, 0)).expect("a");
    let b = c.balloon("a").expect("balloon on by default");
    assert_eq!((b.guest_ram, b.target_bytes), (64 * M, 0));
    let r = c
        .set_balloon(
            "a",
            &BalloonBody {
                guest_size: Some(Size(48 * M)),
                balloon_size: None,
            },
        )
        .expect("guest size");
    assert_eq!((r.target_bytes, r.guest_size), (16 * M, 48 * M));
    let r = c
        .set_balloon(
            "a",
            &BalloonBody {
                guest_size: None,
                balloon_size: Some(Size(8 * M)),
            },
        )
        .expect("balloon size");
    assert_eq!(r.target_bytes, 8 * M);
    let info = c.vm("a").expect("vm");
    assert_eq!(info.balloon.map(|b| b.actual_bytes), Some(8 * M));
    // Balloon options in the create body.
    let mut body = vm("off", 64 * M, 0);
    body.balloon = Some(BalloonConfigBody {
        enabled: false,
        deflate_on_oom: false,
        free_page_reporting: false,
        stats_interval_secs: None,
    });
    assert!(c.create_vm(&body).expect("off").balloon.is_none());
    let mut body = vm("oom", 64 * M, 0);
    body.balloon = Some(BalloonConfigBody {
        enabled: true,
        deflate_on_oom: true,
        free_page_reporting: true,
        stats_interval_secs: Some(0),
    });
    let b = c.create_vm(&body).expect("oom").balloon.expect("balloon");
    assert!(b.deflate_on_oom && b.free_page_reporting);
    assert_eq!(b.stats_interval_secs, None);
    let metrics = c.metrics().expect("metrics");
    assert!(
        metrics.contains("memtide_vm_balloon_bytes{vm=\"a\",kind=\"target\"} 8388608"),
        "{metrics}"
    );
}

#[test]
fn hostile_requests_get_clean_4xx_and_change_nothing() {
    let s = TestServer::start(true);
    let c = s.client();
    c.create_vm(&vm("a", 64 * M, 256 * M)).expect("a");
    c.create_vm(&vm("b", 64 * M, 256 * M)).expect("b");
    c.create_vm(&vm("c", 64 * M, 256 * M)).expect("c");
    c.resize(
        "a",
        &ResizeBody {
            size: Size(64 * M + 64 * M),
            node: None,
            wait_secs: 5,
        },
    )
    .expect("a plugs 64 MiB");
    c.vm_verb("b", "pause").expect("b paused");
    let before = snapshot(&s);

    let k = r#""kernel":"/k""#;
    let numa = |extra: &str| {
        format!(r#"{{{k},"numa":[{{"guest_numa_id":0,"cpus":[0],"memory":"64M"{extra}}}]}}"#)
    };
    let mut cases: Vec<Case> = vec![
        // Bad JSON and wrong types.
        json_case("POST", "/v1/vms", "{", 400),
        json_case("POST", "/v1/vms", "", 400),
        json_case("POST", "/v1/vms", "[]", 400),
        json_case("POST", "/v1/vms", "\"x\"", 400),
        json_case("POST", "/v1/vms", "null", 400),
        json_case("POST", "/v1/vms", "{\"kernel\":123}", 400),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"cmdline\":{{\"a\":1}}}}"),
            400,
        ),
        json_case("POST", "/v1/vms", &format!("{{{k},{k}}}"), 400),
        json_case("POST", "/v1/vms", &format!("{{{k},\"numa\":\"0\"}}"), 400),
        // Huge and negative numbers.
        json_case("POST", "/v1/vms", &format!("{{{k},\"memory\":-1}}"), 400),
        json_case("POST", "/v1/vms", &format!("{{{k},\"memory\":1e30}}"), 400),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"memory\":18446744073709551616}}"),
            400,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"memory\":\"99999999999T\"}}"),
            400,
        ),
        json_case("POST", "/v1/vms", &format!("{{{k},\"vcpus\":-1}}"), 400),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"vcpus\":4294967296}}"),
            400,
        ),
        json_case("POST", "/v1/vms", &format!("{{{k},\"vcpus\":0}}"), 400),
        json_case("POST", "/v1/vms", &format!("{{{k},\"vcpus\":300}}"), 422),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"memory\":\"2T\"}}"),
            422,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"memory\":\"3M\"}}"),
            400,
        ),
        json_case("POST", "/v1/vms", &numa(",\"hotplug_size\":\"100M\""), 400),
        json_case("POST", "/v1/vms", &numa(",\"host_numa_id\":9"), 400),
        json_case("POST", "/v1/vms", &numa(",\"guest_numa_id\":5"), 400),
        json_case(
            "POST",
            "/v1/vms",
            &format!(r#"{{{k},"numa":[{{"guest_numa_id":0,"cpus":[7],"memory":"64M"}}]}}"#),
            400,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!(r#"{{{k},"numa":[{{"guest_numa_id":0,"cpus":[0],"memory":"8M"}}]}}"#),
            422,
        ),
        // Unknown fields.
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"colour\":\"red\"}}"),
            400,
        ),
        json_case("POST", "/v1/vms", &numa(",\"extra\":1"), 400),
        json_case(
            "PUT",
            "/v1/vms/a/resize",
            "{\"size\":\"1G\",\"colour\":1}",
            400,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"c\",\"size\":\"2M\",\"x\":0}",
            400,
        ),
        // Bad ids and paths in bodies.
        json_case("POST", "/v1/vms", "{\"kernel\":\"relative/vmlinuz\"}", 400),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"console_socket\":\"rel.sock\"}}"),
            400,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"console\":\"/tmp/x.console\",\"console_socket\":\"/tmp/x.sock\"}}"),
            400,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"initrd\":\"../x\"}}"),
            400,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"id\":\"../etc\"}}"),
            400,
        ),
        json_case("POST", "/v1/vms", &format!("{{{k},\"id\":\"\"}}"), 400),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{{{k},\"id\":\"{}\"}}", "x".repeat(65)),
            400,
        ),
        json_case("POST", "/v1/vms", &format!("{{{k},\"id\":\"a\"}}"), 409),
        // Wrong content type, oversize and non-UTF-8 bodies, deep nesting.
        (
            "POST",
            "/v1/vms".into(),
            Some("text/plain"),
            b"{}".to_vec(),
            415,
        ),
        (
            "PUT",
            "/v1/vms/a/resize".into(),
            None,
            b"{\"size\":1}".to_vec(),
            415,
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some("application/json"),
            format!("{{{k},\"cmdline\":\"{}\"}}", "a".repeat(100_000)).into_bytes(),
            413,
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some("application/json"),
            vec![0xff, 0xfe, b'{'],
            400,
        ),
        json_case(
            "POST",
            "/v1/vms",
            &format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            400,
        ),
        // Unknown VMs and path tricks.
        bare("GET", "/v1/vms/nope", 404),
        bare("GET", "/v1/vms/..%2F..%2Fetc%2Fpasswd", 400),
        bare("GET", "/v1/vms/%2e%2e", 400),
        bare("GET", "/v1/vms/a%00", 400),
        bare("GET", "/v1/vms/%ff%fe", 400),
        bare("GET", &format!("/v1/vms/{}", "x".repeat(8000)), 400),
        bare("GET", "/v1/vms/a/../b", 404),
        bare("GET", "/../../etc/passwd", 404),
        bare("GET", "/v1/vms/", 404),
        bare("PUT", "/v1/vms//pause", 400),
        bare("GET", "/v1/VMS", 404),
        bare("GET", "/v2/vms", 404),
        bare("PUT", "/v1/vms/nope/pause", 404),
        bare("DELETE", "/v1/vms/nope", 404),
        // Wrong methods.
        bare("DELETE", "/v1/pool", 405),
        bare("POST", "/v1/vms/a", 405),
        bare("GET", "/v1/vms/a/pause", 405),
        bare("PATCH", "/v1/vms", 405),
        bare("PUT", "/health", 405),
        bare("POST", "/metrics", 405),
        bare("GET", "/v1/rebalance", 405),
        // Wrong states.
        bare("PUT", "/v1/vms/a/resume", 409),
        bare("PUT", "/v1/vms/b/pause", 409),
        bare("DELETE", "/v1/vms/a", 409),
        // Bad resizes.
        json_case("PUT", "/v1/vms/a/resize", "{\"size\":\"3M\"}", 400),
        json_case("PUT", "/v1/vms/a/resize", "{\"size\":-5}", 400),
        json_case("PUT", "/v1/vms/a/resize", "{}", 400),
        json_case("PUT", "/v1/vms/a/resize", "{\"size\":\"100G\"}", 422),
        json_case("PUT", "/v1/vms/a/resize", "{\"size\":\"32M\"}", 422),
        json_case(
            "PUT",
            "/v1/vms/a/resize",
            "{\"size\":\"128M\",\"node\":7}",
            400,
        ),
        json_case(
            "PUT",
            "/v1/vms/a/resize",
            "{\"size\":\"1G\",\"wait_secs\":100000}",
            422,
        ),
        json_case("PUT", "/v1/vms/b/resize", "{\"size\":\"128M\"}", 409),
        json_case("PUT", "/v1/vms/nope/resize", "{\"size\":\"128M\"}", 404),
        // Bad balloon targets.
        json_case("PUT", "/v1/vms/a/balloon", "{}", 400),
        json_case(
            "PUT",
            "/v1/vms/a/balloon",
            "{\"guest_size\":\"32M\",\"balloon_size\":\"32M\"}",
            400,
        ),
        json_case("PUT", "/v1/vms/a/balloon", "{\"guest_size\":3000}", 400),
        json_case("PUT", "/v1/vms/a/balloon", "{\"balloon_size\":-4096}", 400),
        json_case("PUT", "/v1/vms/a/balloon", "{\"size\":\"32M\"}", 400),
        json_case("PUT", "/v1/vms/a/balloon", "{\"balloon_size\":\"1G\"}", 422),
        json_case("PUT", "/v1/vms/a/balloon", "{\"guest_size\":\"65M\"}", 422),
        json_case(
            "PUT",
            "/v1/vms/nope/balloon",
            "{\"guest_size\":\"32M\"}",
            404,
        ),
        bare("GET", "/v1/vms/nope/balloon", 404),
        json_case(
            "POST",
            "/v1/vms",
            &format!(r#"{{{k},"memory":"64M","balloon":{{"enable":true}}}}"#),
            400,
        ),
        bare("DELETE", "/v1/vms/a/balloon", 405),
        // Bad rebalances.
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"a\",\"size\":\"2M\"}",
            400,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"nope\",\"size\":\"2M\"}",
            404,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"c\",\"size\":0}",
            400,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"c\",\"size\":\"3M\"}",
            400,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"b\",\"size\":\"2M\"}",
            409,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"c\",\"size\":\"1G\"}",
            422,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"c\",\"to\":\"a\",\"size\":\"2M\"}",
            422,
        ),
        json_case(
            "PUT",
            "/v1/rebalance",
            "{\"from\":\"a\",\"to\":\"c\",\"size\":\"2M\",\"to_node\":3}",
            400,
        ),
    ];
    // Raw protocol abuse: hyper answers these itself (4xx, no JSON body required).
    let raw_cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "garbage request line"),
        (
            format!(
                "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(512 * 1024)
            )
            .into_bytes(),
            "half a MiB of header",
        ),
        (
            format!(
                "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                200_000,
                "a".repeat(200_000)
            )
            .into_bytes(),
            "chunked body over the limit",
        ),
    ];
    let mut n = 0;
    for case in cases.drain(..) {
        let (status, body) = s.raw(&request(&case));
        let what = format!("{} {}", case.0, &case.1[..case.1.len().min(60)]);
        assert_eq!(status, case.4, "{what}: status, body {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body}"));
        let msg = v["error"].as_str().unwrap_or("");
        assert!(
            !msg.is_empty(),
            "{what}: {{\"error\": ...}} body, got {body}"
        );
        n += 1;
    }
    for (req, what) in &raw_cases {
        let (status, body) = s.raw(req);
        assert!(
            (400..500).contains(&status),
            "{what}: 4xx, got {status} {body}"
        );
        n += 1;
    }
    assert!(n >= 50, "{n} hostile requests");
    assert_eq!(
        snapshot(&s),
        before,
        "no state change after {n} hostile requests"
    );
    // The server still works.
    assert_eq!(c.health().expect("health").vms, 3);
}

fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    let mut v = doc;
    for part in r.strip_prefix("#/")?.split('/') {
        v = v.get(part)?;
    }
    Some(v)
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap_or("").to_string());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_matches_the_router() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("the document is JSON");
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut documented = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            documented.insert((method.to_uppercase(), path.clone()));
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}: responses");
            for (code, r) in responses {
                assert!(code.len() == 3 && code.parse::<u16>().is_ok(), "{code}");
                assert!(r["description"].is_string(), "{method} {path} {code}");
            }
            if path.contains("{id}") {
                let params = op["parameters"].as_array().expect("id parameter");
                assert!(params
                    .iter()
                    .any(|p| p["name"] == "id" && p["in"] == "path"));
            }
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, routes,
        "the OpenAPI document lists exactly the routes"
    );

    // And the router serves exactly those: each documented operation is routed (no route
    // 404, no 405); every other method on a documented path is a 405.
    let s = TestServer::start(false);
    let c = s.client();
    let path_of = |p: &str| p.replace("{id}", "no-such-vm");
    for (m, p) in &routes {
        let r = c.raw(m, &path_of(p), None).expect("request");
        let body = String::from_utf8_lossy(&r.body);
        assert_ne!(r.status, 405, "{m} {p}: {body}");
        assert!(
            !body.contains("no such endpoint"),
            "{m} {p} is routed: {body}"
        );
    }
    for p in paths.keys() {
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if routes.contains(&(m.to_string(), p.clone())) {
                continue;
            }
            let r = c.raw(m, &path_of(p), None).expect("request");
            assert_eq!(r.status, 405, "{m} {p} is not allowed");
        }
    }
    // The served document is the same one.
    assert_eq!(c.openapi().expect("served"), doc);
}
