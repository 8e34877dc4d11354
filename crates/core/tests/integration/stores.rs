//! The stores as operators run them: Redis over TLS (a CA, a client certificate, a password
//! file), Redis behind a Sentinel that switches masters, PostgreSQL over TLS (`sslmode=verify-full`), and a PostgreSQL that cannot take writes
//! (a read-only database, a streaming standby until it is promoted). Real servers only:
//! `redis-server --tls-port`, PostgreSQL with `ssl = on`, `pg_basebackup` standbys, and
//! certificates from `openssl`.

use std::time::Duration;

use caracal_core::checks;
use caracal_core::config::{Mode, Secret};
use caracal_testkit::pki::Pki;
use caracal_testkit::postgres::PostgresBuilder;
use caracal_testkit::redis::{RedisBuilder, Tls};
use caracal_testkit::sentinel::Sentinel;

use crate::support::{self, check_status};

const WITHIN: Duration = Duration::from_secs(15);

fn output(body: &serde_json::Value, name: &str) -> String {
    body["checks"][name][0]["output"].as_str().unwrap_or("").to_string()
}

/// A service on a `rediss://` URL with `redis_tls` set by `tls`, checked by `redis:connectivity`
/// (and, without asking, `redis:tls`).
async fn redis_app(url: &str, tls: impl FnOnce(&mut caracal_core::config::RedisTlsConfig)) -> support::Served {
    let mut core = support::core_config(Mode::Dev);
    core.redis_url = Some(Secret::new(url));
    tls(&mut core.redis_tls);
    let app = support::app(core);
    let redis = app.redis().expect("a Redis client from the TLS settings");
    support::serve(app.check(checks::redis(redis))).await
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_needs_the_right_ca_and_client_certificate_and_names_what_is_wrong() {
    let mut pki = Pki::new().expect("a CA");
    let server = pki.server("IP:127.0.0.1,DNS:localhost", 30, None).expect("a server certificate");
    let client = pki.client(30).expect("a client certificate");
    let stranger = Pki::new().expect("another CA");
    let redis = RedisBuilder::default()
        .tls(Tls { server, client_ca: Some(pki.ca.cert.clone()) })
        .start()
        .expect("redis-server with --tls-port");
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");

    // The CA and a client certificate: ready, with the TLS session verified.
    let served = redis_app(&url, |t| {
        t.ca_file = Some(pki.ca.cert.clone());
        t.client_cert_file = Some(client.cert.clone());
        t.client_key_file = Some(client.key.clone());
    })
    .await;
    let body = served.wait_ready_status(200, WITHIN).await.expect("ready over TLS");
    assert_eq!(check_status(&body, "redis:connectivity"), "pass", "{body}");
    assert_eq!(check_status(&body, "redis:tls"), "pass", "{body}");
    drop(served);

    // A CA that did not issue the server's certificate: `redis:tls` fails and says why.
    let served = redis_app(&url, |t| {
        t.ca_file = Some(stranger.ca.cert.clone());
        t.client_cert_file = Some(client.cert.clone());
        t.client_key_file = Some(client.key.clone());
    })
    .await;
    let body = served.wait_for_check("redis:tls", "fail", WITHIN).await.expect("redis:tls fails");
    assert!(output(&body, "redis:tls").starts_with("unknown_issuer"), "{body}");
    assert_eq!(served.wait_ready_status(503, WITHIN).await.map(|_| ()), Ok(()));
    drop(served);

    // The right CA but no client certificate, which this server requires.
    let served = redis_app(&url, |t| t.ca_file = Some(pki.ca.cert.clone())).await;
    let body = served.wait_for_check("redis:tls", "fail", WITHIN).await.expect("redis:tls fails");
    assert!(output(&body, "redis:tls").starts_with("tls_handshake"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_password_file_authenticates_and_stays_out_of_the_url() {
    let redis = RedisBuilder::default().start().expect("redis-server");
    let dir = tempfile::tempdir().expect("scratch");
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "s3cret-Pa55\n").expect("write the password file");
    redis.command("CONFIG SET requirepass s3cret-Pa55").expect("require a password");

    let mut core = support::core_config(Mode::Dev);
    core.redis_url = Some(Secret::new(redis.url()));
    core.redis_password_file = Some(password.clone());
    let app = support::app(core);
    let conn = app.redis().expect("redis");
    let served = support::serve(app.check(checks::redis(conn))).await;
    served.wait_ready_status(200, WITHIN).await.expect("authenticated with the file's password");
    drop(served);

    let mut core = support::core_config(Mode::Dev);
    core.redis_url = Some(Secret::new(redis.url()));
    let app = support::app(core);
    let conn = app.redis().expect("redis");
    let served = support::serve(app.check(checks::redis(conn))).await;
    let body = served.wait_for_check("redis:connectivity", "fail", WITHIN).await.expect("refused without it");
    assert!(!body.to_string().contains("s3cret"), "no password in {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_tls_settings_that_cannot_work_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("scratch");
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        .expect("write");
    let error = |url: &str, tls: caracal_core::config::RedisTlsConfig| {
        let mut core = support::core_config(Mode::Dev);
        core.redis_url = Some(Secret::new(url));
        core.redis_tls = tls;
        support::app(core).redis().expect_err("refused at start-up").to_string()
    };
    let ca = |path: &std::path::Path| caracal_core::config::RedisTlsConfig {
        ca_file: Some(path.to_path_buf()),
        ..Default::default()
    };

    let text = error("redis://127.0.0.1:6379/", ca(&garbage));
    assert!(text.contains("`redis_tls`") && text.contains("rediss://"), "{text}");
    let text = error("rediss://127.0.0.1:6379/", ca(&dir.path().join("missing.pem")));
    assert!(text.contains("`redis_tls.ca_file`") && text.contains("missing.pem"), "{text}");
    let text = error("rediss://127.0.0.1:6379/", ca(&garbage));
    assert!(text.contains("`redis_tls`") && text.contains("unusable"), "{text}");
    let half = caracal_core::config::RedisTlsConfig { client_cert_file: Some(garbage.clone()), ..Default::default() };
    let text = error("rediss://127.0.0.1:6379/", half);
    assert!(text.contains("redis_tls.client_key_file"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_settings_that_cannot_work_stop_start_up_naming_the_key() {
    let error = |url: Option<&str>, master: Option<&str>, nodes: &[&str]| {
        let mut core = support::core_config(Mode::Dev);
        core.redis_url = url.map(Secret::new);
        core.redis_sentinel.master = master.map(str::to_owned);
        core.redis_sentinel.nodes = nodes.iter().copied().map(Secret::new).collect();
        support::app(core).redis().expect_err("refused at start-up").to_string()
    };
    let one = ["redis://127.0.0.1:26379"];
    let text = error(Some("redis://127.0.0.1:6379/"), Some("m"), &one);
    assert!(text.contains("`redis_sentinel`") && text.contains("not both"), "{text}");
    let text = error(None, None, &one);
    assert!(text.contains("`redis_sentinel.master`") && text.contains("CARACAL_REDIS_SENTINEL__MASTER"), "{text}");
    let text = error(None, Some("m"), &[]);
    assert!(text.contains("`redis_sentinel.nodes`") && text.contains("CARACAL_REDIS_SENTINEL__NODES"), "{text}");
    let text = error(None, Some("m"), &["redis://127.0.0.1:26379", "http://:secret@127.0.0.1:26380"]);
    assert!(text.contains("`redis_sentinel.nodes[1]`") && !text.contains("secret"), "{text}");
    let text = error(None, Some("m"), &["redis://127.0.0.1:26379", "rediss://127.0.0.1:26380"]);
    assert!(text.contains("`redis_sentinel.nodes`") && text.contains("one scheme"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_connection_follows_the_master_through_a_switch() {
    let master = RedisBuilder::default().start().expect("a master");
    let replica = RedisBuilder::default().replica_of(master.port()).start().expect("a replica");
    let sentinel = Sentinel::start("core", master.port(), 1).expect("a sentinel");
    let known = caracal_testkit::poll::wait_for_blocking(WITHIN, Duration::from_millis(50), || {
        sentinel.replicas("core") == 1
            && replica.command("INFO replication").is_ok_and(|info| info.contains("master_link_status:up"))
    });
    assert!(known, "the sentinel knows the replica, which follows the master");
    let mut core = support::core_config(Mode::Dev);
    core.redis_sentinel.master = Some("core".into());
    core.redis_sentinel.nodes = vec![Secret::new(sentinel.url())];
    let app = support::app(core);
    let mut connection = app.redis().expect("a connection through the sentinel");
    let set = |connection: &mut caracal_core::RedisConnection, key: &'static str| {
        let mut connection = connection.clone();
        async move { redis::cmd("SET").arg(key).arg("1").query_async::<String>(&mut connection).await }
    };
    set(&mut connection, "before").await.expect("a write to the master the sentinel names");
    assert!(master.command("GET before").expect("get").starts_with("$1"), "written to the master");

    // A switch without a crash: the old master is demoted and answers writes READONLY.
    let reply = sentinel.command("SENTINEL FAILOVER core").expect("failover");
    assert!(reply.starts_with("+OK"), "{reply}");
    let switched = caracal_testkit::poll::wait_for_blocking(WITHIN, Duration::from_millis(20), || {
        sentinel.master_port("core") == Some(replica.port())
    });
    assert!(switched, "the sentinel names the replica");
    // Until the sentinel demotes the old master, writes still land there (and are lost when it
    // resyncs: Redis failover is asynchronous); once demoted it answers READONLY, and the
    // connection asks the sentinel again. The sentinel demotes it on its next `INFO` of the old
    // master, sent every 10 s.
    let (mut refused, deadline) = (0, std::time::Instant::now() + Duration::from_secs(45));
    loop {
        match set(&mut connection, "after").await {
            Err(_) => refused += 1,
            Ok(_) if replica.command("GET after").expect("get").starts_with("$1") => break,
            Ok(_) => {}
        }
        assert!(std::time::Instant::now() < deadline, "the same connection writes to the new master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused <= 3, "a refused write or two while switching, not one per retry: {refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_verifies_the_server_and_refuses_one_without_tls() {
    let mut pki = Pki::new().expect("a CA");
    let server = pki.server("IP:127.0.0.1,DNS:localhost", 30, None).expect("a server certificate");
    let stranger = Pki::new().expect("another CA");
    let postgres = PostgresBuilder::default().tls(server).start().expect("PostgreSQL with ssl = on");
    let verify_full =
        |base: &str, ca: &std::path::Path| format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let serve = |url: String| async move {
        let mut core = support::core_config(Mode::Dev);
        core.database_url = Some(Secret::new(url));
        let app = support::app(core);
        let pool = app.postgres().expect("pool");
        support::serve(app.check(checks::postgres(pool))).await
    };

    let served = serve(verify_full(&postgres.url(), &pki.ca.cert)).await;
    served.wait_ready_status(200, WITHIN).await.expect("ready over verified TLS");
    let ssl: String = postgres
        .psql("postgres", "SELECT string_agg(ssl::text, ',') FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE client_addr IS NOT NULL AND application_name LIKE 'caracal-%'")
        .expect("pg_stat_ssl");
    assert!(ssl.contains("true"), "the service's sessions use TLS: {ssl}");
    drop(served);

    let served = serve(verify_full(&postgres.url(), &stranger.ca.cert)).await;
    let body = served.wait_for_check("postgres:connectivity", "fail", WITHIN).await.expect("a wrong CA fails");
    assert!(output(&body, "postgres:connectivity").contains("UnknownIssuer"), "{body}");
    drop(served);

    // The shared server offers no TLS: verify-full must not fall back to plain text.
    let plain = support::shared().postgres.url();
    let served = serve(verify_full(&plain, &pki.ca.cert)).await;
    let body = served.wait_for_check("postgres:connectivity", "fail", WITHIN).await.expect("no TLS, no connection");
    assert!(output(&body, "postgres:connectivity").to_lowercase().contains("tls"), "{body}");
}

/// A service with `postgres:writable` on `url`, and the pool its checks use (as its handlers
/// would).
async fn writable_app(url: String) -> (support::Served, sqlx::PgPool) {
    let mut core = support::core_config(Mode::Dev);
    core.database_url = Some(Secret::new(url));
    // A run tests and closes several sessions; on a loaded machine that can take longer than
    // the test default's 1 s, and a run cut short reports none of what it closed.
    core.checks.timeout = Duration::from_secs(5);
    let app = support::app(core);
    let pool = app.postgres().expect("pool");
    let checks = app.check(checks::postgres(pool.clone())).check(checks::postgres_writable(pool.clone()));
    (support::serve(checks).await, pool)
}

/// `transaction_read_only` of every idle connection in `pool`, each tested once.
async fn idle_sessions_read_only(pool: &sqlx::PgPool) -> Vec<String> {
    let mut held = Vec::new();
    let mut settings = Vec::new();
    while let Some(mut conn) = pool.try_acquire() {
        let setting: String = sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
            .fetch_one(&mut *conn)
            .await
            .expect("ask");
        settings.push(setting);
        held.push(conn);
    }
    settings
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_database_fails_readiness_and_its_connections_are_replaced_once_writable() {
    let shared = support::shared();
    let url = shared.postgres.fresh_database("writable").expect("database");
    let name = url.rsplit('/').next().expect("database name").to_string();
    let (served, pool) = writable_app(url).await;
    let body = served.wait_ready_status(200, WITHIN).await.expect("ready on a writable primary");
    assert_eq!(check_status(&body, "postgres:writable"), "pass");

    // New sessions of this database are read-only; the old ones go (as in a failover).
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    shared
        .postgres
        .psql("postgres", &format!("ALTER DATABASE {name} SET default_transaction_read_only = on"))
        .expect("alter");
    shared.postgres.psql("postgres", &terminate).expect("terminate");
    let body = served.wait_for_check("postgres:writable", "fail", WITHIN).await.expect("unready while read-only");
    assert_eq!(body["status"], "fail");
    assert!(output(&body, "postgres:writable").contains("read-only"), "{body}");
    assert_eq!(check_status(&body, "postgres:connectivity"), "pass", "reads still work: {body}");
    // Requests meanwhile fill the pool with read-only sessions, and the next run closes them
    // all at once (its own and the idle ones), not one per run. Sessions go back to the pool
    // on a task of their own, so a run that starts while they are being handed back sees only
    // some of them; such a round is tried again. Closing one per run never reaches 4.
    let mut swept = Err(Duration::ZERO);
    for _ in 0..5 {
        let mut busy = Vec::new();
        for _ in 0..4 {
            busy.push(pool.acquire().await.expect("a session"));
        }
        drop(busy);
        swept = caracal_testkit::wait_for(Duration::from_secs(3), Duration::from_millis(50), || async {
            let (_, body) = served.get_json("/ready").await;
            let text = output(&body, "postgres:writable");
            let closed: usize = text.split("; ").nth(1)?.split(' ').next()?.parse().ok()?;
            (closed >= 4).then_some(text)
        })
        .await;
        if swept.is_ok() {
            break;
        }
    }
    assert!(swept.is_ok(), "idle read-only sessions closed together: {swept:?}");

    // Writable again for new sessions: the read-only pooled ones are closed and replaced.
    shared
        .postgres
        .psql("postgres", &format!("ALTER DATABASE {name} RESET default_transaction_read_only"))
        .expect("reset");
    let body = served.wait_ready_status(200, WITHIN).await.expect("ready again without a restart");
    assert_eq!(check_status(&body, "postgres:writable"), "pass");
    let idle = idle_sessions_read_only(&pool).await;
    assert!(idle.iter().all(|s| s == "off"), "no read-only session left in the pool: {idle:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_on_a_standby_is_unready_until_it_is_promoted() {
    let primary = PostgresBuilder::default().start().expect("a primary");
    let standby = primary.standby().expect("a streaming standby");
    let (served, _pool) = writable_app(standby.url()).await;
    let body = served.wait_for_check("postgres:writable", "fail", WITHIN).await.expect("unready on a standby");
    assert_eq!(body["status"], "fail");
    assert!(output(&body, "postgres:writable").contains("standby"), "{body}");
    assert_eq!(check_status(&body, "postgres:connectivity"), "pass", "{body}");

    standby.promote().expect("promote");
    served.wait_ready_status(200, WITHIN).await.expect("ready once promoted, without a restart");
}
