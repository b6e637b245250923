//! `idemgate admin …` against a running proxy's admin API: the binary as an
//! operator runs it, with the token the config sets.

use std::process::Command;

use crate::support::Proxy;

const TOKEN: &str = "an-admin-token-long-enough";

/// Runs `idemgate admin --url … ARGS`; (exit code, stdout, stderr).
fn admin(proxy: &Proxy, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemgate"));
    cmd.arg("admin")
        .arg("--url")
        .arg(format!("http://{}", proxy.admin))
        .env_remove("IDEMGATE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    let out = cmd.args(args).output().expect("idemgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_cli_reads_and_changes_what_the_api_does() {
    let proxy = Proxy::launch_admin(
        "127.0.0.1:1",
        "",
        "",
        &format!("token = \"{TOKEN}\"\n"),
        "[dedup]\n[[dedup.rules]]\ntopics = \"orders\"\nmode = \"drop\"\n",
    )
    .await;
    let run = |token, args: Vec<&str>| tokio::task::block_in_place(|| admin(&proxy, token, &args));

    // Reads need no token unless token_for_reads.
    let (code, out, _) = run(None, vec!["connectors"]);
    assert_eq!(code, 0);
    assert!(out.trim_start().starts_with('{') || out.trim_start().starts_with('['));
    let (code, out, _) = run(None, vec!["metrics"]);
    assert_eq!(code, 0);
    assert!(out.contains("# TYPE idemgate_window_keys gauge"));

    // A change without the token is refused, and says so.
    let (code, _, err) = run(None, vec!["pause", "orders source"]);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 401"), "{err}");

    // With it: the connector is paused, then resumed.
    let (code, out, err) = run(Some(TOKEN), vec!["pause", "orders source"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["connector"], "orders source");
    assert_eq!(v["paused"], true);
    let (code, out, _) = run(Some(TOKEN), vec!["resume", "orders source"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"paused\": false"), "pretty JSON: {out}");

    // A window lookup of a record never seen, and a purge.
    let (code, out, err) = run(
        None,
        vec!["lookup", "--topic", "orders", "--record-key", "order-42"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"seen\": false"), "{out}");
    let (code, _, err) = run(Some(TOKEN), vec!["purge", "--topic", "orders"]);
    assert_eq!(code, 0, "{err}");

    // Nothing listening: a clear failure, exit 1.
    let gone = proxy.admin;
    proxy.stop().await;
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .args(["admin", "--url", &format!("http://{gone}"), "ready"])
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("idemgate admin:"));
}
