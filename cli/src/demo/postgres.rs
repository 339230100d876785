//! A throwaway PostgreSQL cluster: `initdb` in a temporary directory, a free port on
//! 127.0.0.1, TimescaleDB preloaded when its library is installed, everything removed on drop.
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
//! [`ServerOptions`] adds settings, files (TLS keys and certificates) and pg_hba.conf rules.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where PostgreSQL's server programs are looked for, in order: `$PG_BIN_DIR`, then the
/// newest `/usr/lib/postgresql/<version>/bin`, then `pg_config --bindir`.
pub const PG_BIN_ENV: &str = "PG_BIN_DIR";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TempPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    timescaledb: bool,
    as_postgres_user: bool,
    /// Server options, reused by [`TempPostgres::start_again`].
    options: String,
}

/// What a cluster gets beyond the defaults (see [`TempPostgres::start_with_options`]).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Server settings, `name=value` (each passed as `-c`), such as `ssl=on`.
    pub settings: Vec<String>,
    /// Files written into the data directory before the server starts, owned by the server's
    /// user with mode 0600 (as PostgreSQL wants its TLS key): name, contents. Settings name
    /// them relative to the data directory (`ssl_key_file=server.key`).
    pub files: Vec<(String, Vec<u8>)>,
    /// When set, pg_hba.conf holds these lines after `local all all trust` instead of
    /// initdb's rules, which trust every local TCP connection.
    pub hba: Option<Vec<String>>,
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").exists() && dir.join("pg_ctl").exists() && dir.join("postgres").exists()
}

/// Finds PostgreSQL's server programs, or says what to install.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!(
            "{PG_BIN_ENV}={} has no initdb/pg_ctl/postgres",
            dir.display()
        );
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server found: install it (Debian/Ubuntu: `apt-get install postgresql`) \
         or set {PG_BIN_ENV} to the directory holding initdb, pg_ctl and postgres"
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl TempPostgres {
    /// Starts a cluster with TimescaleDB when it is installed. `durable = false` turns fsync
    /// off (fine for tests, not for benchmarks).
    pub fn start(durable: bool) -> anyhow::Result<TempPostgres> {
        Self::start_with(durable, true)
    }

    /// Starts a cluster; with `timescaledb = false` it is plain PostgreSQL even when
    /// TimescaleDB is installed.
    pub fn start_with(durable: bool, timescaledb: bool) -> anyhow::Result<TempPostgres> {
        Self::start_with_options(durable, timescaledb, &ServerOptions::default())
    }

    /// Starts a cluster as [`TempPostgres::start_with`] does, with `extra`'s settings, files
    /// and pg_hba.conf rules.
    pub fn start_with_options(
        durable: bool,
        timescaledb: bool,
        extra: &ServerOptions,
    ) -> anyhow::Result<TempPostgres> {
        let bin = find_bin_dir()?;
        let as_postgres_user = is_root();
        let dir = std::env::temp_dir().join(format!(
            "otelgate-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = crate::ports::free_port()?;
        let timescaledb = timescaledb
            && bin
                .parent()
                .is_some_and(|root| root.join("lib/timescaledb.so").exists());
        let mut cluster = TempPostgres {
            bin,
            dir,
            port,
            timescaledb,
            as_postgres_user,
            options: String::new(),
        };
        if as_postgres_user {
            cluster.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.dir),
            )?;
        }
        let data = cluster.dir.join("data");
        cluster.run(
            cluster
                .command("initdb")
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                    "-D",
                ])
                .arg(&data),
        )?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            cluster.dir.display()
        );
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        if timescaledb {
            // TimescaleDB runs each policy as a background worker, out of the same
            // `max_worker_processes` (8 by default) as parallel queries: with the thirteen
            // policies of the migrations, jobs due together failed with "failed to start a
            // background worker". TimescaleDB's rule: its workers (16) + parallel workers
            // (8) + 3.
            options.push_str(
                " -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off \
                 -c max_worker_processes=27",
            );
        }
        for setting in &extra.settings {
            options.push_str(&format!(" -c '{setting}'"));
        }
        cluster.options = options;
        cluster.prepare(&data, extra)?;
        cluster.start_again()?;
        Ok(cluster)
    }

    /// Writes `extra`'s files and pg_hba.conf into the data directory `data`.
    fn prepare(&self, data: &Path, extra: &ServerOptions) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (name, contents) in &extra.files {
            let path = data.join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("cannot write {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if self.as_postgres_user {
                self.run(Command::new("chown").arg("postgres:postgres").arg(&path))?;
            }
        }
        if let Some(lines) = &extra.hba {
            // Rewriting the file initdb made keeps its owner.
            let hba = format!("local all all trust\n{}\n", lines.join("\n"));
            std::fs::write(data.join("pg_hba.conf"), hba)?;
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, command: &mut Command) -> anyhow::Result<()> {
        let output = command
            .output()
            .with_context(|| format!("cannot run {command:?}"))?;
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!(
                "{command:?} failed: {}{}\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The directory holding the cluster (and its socket); owned by `postgres` when run as root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether server programs run as the `postgres` user (because this process is root).
    pub fn runs_as_postgres_user(&self) -> bool {
        self.as_postgres_user
    }

    /// A connection URL for database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A libpq-style connection string for database `postgres` as user `postgres` through
    /// the Unix socket, which `local all all trust` keeps open whatever the TCP rules.
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether TimescaleDB's library is installed (and so preloaded).
    pub fn timescaledb(&self) -> bool {
        self.timescaledb
    }

    /// Stops the server at once (like a crash); `start_again` brings it back.
    pub fn stop_immediately(&self) -> anyhow::Result<()> {
        self.run(
            self.command("pg_ctl")
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop"),
        )
    }

    /// Starts a stopped server again with the same settings.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.run(
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-o", &self.options, "start"]),
        )
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
