//! Private Postgres and NATS servers for fault tests: each test starts its own, on a port of
//! its own under a directory of its own, and stops them as it likes. The machine's servers
//! are never touched.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

/// A free TCP port on loopback (bound, read and released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn scratch(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("leads-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(program).args(args).stdin(Stdio::null()).output().await?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Postgres 15's programs, from Debian's package.
fn pg_bin(program: &str) -> String {
    format!("/usr/lib/postgresql/15/bin/{program}")
}

/// A Postgres cluster of the test's own, run as the `postgres` user (initdb refuses root).
pub struct PrivatePostgres {
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = scratch("pg")?;
        run("chown", &["postgres:postgres", path(&dir)?]).await?;
        let data = dir.join("data");
        let data = path(&data)?;
        as_postgres(&pg_bin("initdb"), &["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]).await?;
        let cluster = Self { port: free_port()?, dir };
        cluster.up().await?;
        Ok(cluster)
    }

    /// The admin URL of a database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts (again) the cluster and waits until it accepts connections.
    pub async fn up(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let options = format!("-p {} -k {} -c fsync=off -c listen_addresses=127.0.0.1", self.port, path(&self.dir)?);
        as_postgres(&pg_bin("pg_ctl"), &["-D", path(&data)?, "-l", path(&log)?, "-o", &options, "-w", "start"]).await
    }

    /// Stops the cluster at once, as a crash would (`immediate`): clients see their
    /// connections break and new ones refused.
    pub async fn down(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        as_postgres(&pg_bin("pg_ctl"), &["-D", path(&data)?, "-m", "immediate", "-w", "stop"]).await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D"])
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn as_postgres(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-u", "postgres", "--", program];
    full.extend_from_slice(args);
    run("runuser", &full).await
}

fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str().ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", path.display()))
}

/// A nats-server with JetStream of the test's own; its store survives a restart.
pub struct PrivateNats {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<tokio::process::Child>,
    /// A configuration file of the test's own, and the environment it reads.
    config: Option<(PathBuf, Vec<(String, String)>)>,
}

impl PrivateNats {
    pub async fn start() -> anyhow::Result<Self> {
        let mut server = Self { dir: scratch("nats")?, port: free_port()?, child: None, config: None };
        server.up().await?;
        Ok(server)
    }

    /// Started with the configuration `config` writes for the server's own directory (its
    /// JetStream store belongs there), and the environment variables it refers to.
    pub async fn with_config(config: impl FnOnce(&Path) -> String, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let dir = scratch("nats")?;
        let file = dir.join("nats-server.conf");
        std::fs::write(&file, config(&dir))?;
        let mut server = Self { dir, port: free_port()?, child: None, config: Some((file, env)) };
        server.up().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) the server on its port and store, and waits until it accepts clients.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.config {
            Some((file, env)) => {
                command.args(["-c", path(file)?]).envs(env.iter().map(|(k, v)| (k, v)));
            }
            None => {
                command.args(["-js", "-sd", path(&self.dir.join("store"))?]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start nats-server (is it installed?): {e}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub async fn down(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
