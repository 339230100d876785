//! The container image: the Dockerfile's instructions as the other artefacts rely on them, its
//! log directory, and its healthcheck command run against a live and a dead gateway.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use otelgate::demo::backend::RecordingBackend;
use otelgate::export::otlp::Protocol;
use otelgate::Gateway;

use super::{free_port, read, run_bounded, ADMIN};
use crate::{config_for, start};

pub(super) struct Dockerfile {
    pub(super) text: String,
}

impl Dockerfile {
    pub(super) fn load() -> Self {
        Dockerfile {
            text: read("Dockerfile").replace("\\\n", " "),
        }
    }

    /// Instructions (first word upper-case) and their arguments, continuation lines joined.
    pub(super) fn instructions(&self, name: &str) -> Vec<String> {
        self.text
            .lines()
            .map(str::trim)
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(i, _)| *i == name)
            .map(|(_, args)| args.trim().to_owned())
            .collect()
    }

    /// The runtime stage's `ENV` variables, which every container of the image starts with
    /// (`ENV KEY=value ...` and the old `ENV KEY value` form).
    pub(super) fn env(&self) -> BTreeMap<String, String> {
        let runtime = self
            .text
            .rsplit_once("\nFROM ")
            .map_or(self.text.as_str(), |(_, r)| r);
        let unquote = |v: &str| v.trim_matches('"').to_owned();
        let mut env = BTreeMap::new();
        for line in runtime.lines().map(str::trim) {
            let Some(args) = line.strip_prefix("ENV ") else {
                continue;
            };
            let args = args.trim();
            match args.split_once(char::is_whitespace) {
                Some((key, value)) if !key.contains('=') => {
                    env.insert(key.to_owned(), unquote(value.trim()));
                }
                _ => {
                    for pair in args.split_whitespace() {
                        let (key, value) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("ENV `{pair}` is not KEY=value"));
                        env.insert(key.to_owned(), unquote(value));
                    }
                }
            }
        }
        env
    }

    /// The environment of a container of this image: the image's `ENV`, then `overrides`
    /// (compose's `environment`, a pod's `env`), which win.
    pub(super) fn container_env(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = self.env();
        env.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The exec-form array of `HEALTHCHECK ... CMD [...]`.
    pub(super) fn healthcheck(&self) -> Vec<String> {
        let check = self.instructions("HEALTHCHECK");
        assert_eq!(check.len(), 1, "one HEALTHCHECK");
        let (_, cmd) = check[0].split_once("CMD").expect("HEALTHCHECK ... CMD");
        serde_json::from_str(cmd.trim()).expect("HEALTHCHECK CMD in exec form (JSON array)")
    }
}

/// The durable log's directory in the image: where `OTELGATE_LOG__DIR` points, a `VOLUME`, and
/// created for the gateway's user.
#[track_caller]
pub(super) fn image_log_dir(docker: &Dockerfile) -> String {
    let dir = docker
        .env()
        .remove("OTELGATE_LOG__DIR")
        .expect("the image sets OTELGATE_LOG__DIR, so that the log lands on its volume");
    assert!(
        docker
            .instructions("VOLUME")
            .iter()
            .any(|v| v.split_whitespace().any(|v| v.trim_matches('"') == dir)),
        "the log directory {dir} is not a VOLUME of the image"
    );
    let chowned = docker.instructions("RUN").iter().any(|run| {
        run.split("&&").any(|cmd| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            words.first() == Some(&"chown") && words.contains(&dir.as_str())
        })
    });
    assert!(
        chowned,
        "the image does not hand {dir} to its non-root user: the log could not be written"
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_tells_a_serving_gateway_from_a_dead_one() {
    let backend = RecordingBackend::start().await.unwrap();
    let gateway: Gateway = start(config_for(&[("lgtm", &backend, Protocol::Grpc)])).await;
    let check = Dockerfile::load().healthcheck();
    let run = |port: u16| {
        let args: Vec<String> = check
            .iter()
            .map(|a| a.replace(&ADMIN.to_string(), &port.to_string()))
            .collect();
        run_bounded(
            Command::new(&args[0]).args(&args[1..]),
            Duration::from_secs(10),
        )
        .status
    };
    assert!(
        run(gateway.admin_addr().port()).success(),
        "healthcheck fails against a serving gateway"
    );
    gateway.shutdown().await;
    assert!(
        !run(free_port()).success(),
        "healthcheck passes with nothing listening"
    );
}
