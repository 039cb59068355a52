//! `runner sim` as a user runs it: one line on stdout with the bound address, the API served
//! there, a clean exit on SIGTERM, and exit code 2 for impossible settings.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const RUNNER: &str = env!("CARGO_BIN_EXE_runner");

#[tokio::test]
async fn runner_sim_prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(RUNNER)
        .args([
            "sim",
            "--addr",
            "127.0.0.1:0",
            "--unlimited",
            "--gen-ms",
            "0",
        ])
        .args(["--ak", "my-ak", "--sk", "my-sk", "--url-ttl", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("no line on stdout within 30 s")
        .unwrap()
        .expect("stdout closed");
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let port: u16 = base
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected address in {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(port, 0, "the real bound port is printed");

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token_url = |ak: &str, sk: &str| {
        format!(
            "{base}/oauth/2.0/token?grant_type=client_credentials&client_id={ak}&client_secret={sk}"
        )
    };
    // The flags reached the server: the default keys are refused, the given ones accepted.
    let refused = http
        .post(token_url("sim-ak", "sim-sk"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let token: Value = http
        .post(token_url("my-ak", "my-sk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    let submit: Value = http
        .post(format!(
            "{base}/rpc/2.0/ernievilg/v1/txt2imgv2?access_token={token}"
        ))
        .body(json!({"prompt": "命令行", "width": 512, "height": 512}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submit["data"]["task_id"].as_str().unwrap();
    let query: Value = http
        .post(format!(
            "{base}/rpc/2.0/ernievilg/v1/getImgv2?access_token={token}"
        ))
        .body(json!({"task_id": id}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(query["data"]["task_status"], "SUCCESS", "{query}");
    let url = query["data"]["sub_task_result_list"][0]["final_image_list"][0]["img_url"]
        .as_str()
        .unwrap();
    let expires: u64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 599..=now + 602).contains(&expires),
        "--url-ttl 10m: {expires} vs {now}"
    );
    let stats: Value = http
        .get(format!("{base}/__sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["submits"], 1);

    let pid = child.id().unwrap().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("runner sim did not stop within 30 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn runner_sim_refuses_impossible_settings_with_exit_code_2() {
    for args in [
        &["--fault-rate", "2"][..],
        &["--gen-ms", "9..1"][..],
        &["--faults", "bogus"][..],
        &["--review-rate", "0.7", "--block-rate", "0.7"][..],
    ] {
        let output = Command::new(RUNNER)
            .args(["sim", "--addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "nothing served for {args:?}");
        assert!(!output.stderr.is_empty());
    }
}
