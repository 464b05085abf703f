//! The drill's cluster: real `liege node` child processes, one per `(region, index)`, and the
//! guard that makes sure every one of them dies with the drill.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

use super::client::Client;
use super::SetupError;

/// What every node of the drill shares.
#[derive(Clone, Debug)]
pub(crate) struct NodeTemplate {
    /// The `liege` executable (the drill's own).
    pub(crate) exe: PathBuf,
    /// `--store` value.
    pub(crate) store: String,
    /// Cluster secret.
    pub(crate) secret: String,
    /// `--lease-ttl-ms`.
    pub(crate) lease_ttl_ms: u64,
    /// `--partitions`.
    pub(crate) partitions: u32,
    /// Where logs go.
    pub(crate) run_dir: PathBuf,
    /// Record every committed write (`--audit`): the drill checks the audit; benchmarks don't.
    pub(crate) audit: bool,
    /// More flags for every node.
    pub(crate) extra: Vec<String>,
}

/// One running (or killed, or paused) node process.
#[derive(Debug)]
pub(crate) struct NodeProc {
    /// Node name, `{region}-{i}`.
    pub(crate) name: String,
    /// Region label.
    pub(crate) region: String,
    /// HTTP API address.
    pub(crate) http: SocketAddr,
    /// Cluster transport address.
    pub(crate) listen: SocketAddr,
    /// The log file (stdout and stderr).
    pub(crate) log: PathBuf,
    /// `None` for a node of an existing deployment (`--target`), reached only over HTTP.
    child: Option<Child>,
    /// True once SIGKILLed by the drill.
    pub(crate) killed: bool,
}

impl NodeProc {
    /// The child's pid (`None` for a node the drill did not start).
    pub(crate) fn pid(&self) -> Option<i32> {
        // (Also used to read the node's CPU time from /proc.)
        self.child
            .as_ref()
            .map(|c| i32::try_from(c.id()).expect("pids fit in i32"))
    }

    /// Sends `sig` to the child (SIGKILL, SIGSTOP, SIGCONT).
    pub(crate) fn signal(&mut self, sig: i32) -> anyhow::Result<()> {
        if self.killed {
            return Ok(());
        }
        let Some(pid) = self.pid() else {
            bail!(
                "{} belongs to an existing deployment: the drill cannot signal it",
                self.name
            );
        };
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (still our child).
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            bail!(
                "signal {sig} to {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        if sig == libc::SIGKILL {
            self.killed = true;
            if let Some(c) = self.child.as_mut() {
                let _ = c.wait();
            }
        }
        Ok(())
    }
}

/// Every node of the run. Dropping it SIGKILLs and reaps every child that is still running
/// (normal end, error, Ctrl-C and panic unwinding all pass through here).
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    /// Nodes in start order (region-major).
    pub(crate) nodes: Vec<NodeProc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut().filter(|n| n.child.is_some()) {
            // A stopped process still dies of SIGKILL.
            let _ = n.signal(libc::SIGKILL);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(l.local_addr()?.port())
}

fn spawn(t: &NodeTemplate, name: &str, region: &str) -> anyhow::Result<NodeProc> {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    spawn_at(t, name, region, listen, http)
}

fn spawn_at(
    t: &NodeTemplate,
    name: &str,
    region: &str,
    listen: SocketAddr,
    http: SocketAddr,
) -> anyhow::Result<NodeProc> {
    let log = t.run_dir.join(format!("{name}.log"));
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&t.exe);
    cmd.arg("node")
        .args(["--name", name, "--region", region])
        .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
        .args(["--store", &t.store])
        .args(["--lease-ttl-ms", &t.lease_ttl_ms.to_string()])
        .args(["--partitions", &t.partitions.to_string()])
        .arg("--log-json")
        .args(t.audit.then_some("--audit"))
        .args(&t.extra)
        // The secret goes by environment, never on a command line others can read.
        .env("LIEGE_SECRET", &t.secret)
        .env("LIEGE_LOG", "info,liege::telemetry=debug")
        .env_remove("LIEGE_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    {
        use std::os::unix::process::CommandExt as _;
        // Own process group: a terminal's Ctrl-C reaches only the drill, which then kills
        // its children itself.
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child
        // when the drill dies, even by SIGKILL.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting node {name}"))?;
    Ok(NodeProc {
        name: name.to_string(),
        region: region.to_string(),
        http,
        listen,
        log,
        child: Some(child),
        killed: false,
    })
}

/// Exits status of a node the drill started, if it has exited (`None` while running or for
/// a node of an existing deployment).
fn exited(node: &mut NodeProc) -> anyhow::Result<Option<std::process::ExitStatus>> {
    match node.child.as_mut() {
        Some(c) => Ok(c.try_wait()?),
        None => Ok(None),
    }
}

impl Cluster {
    /// Starts `per_region` nodes in every region and waits until each answers `/readyz`.
    /// A node that exits early (e.g. its probed port was taken meanwhile) is retried.
    pub(crate) async fn start(
        t: &NodeTemplate,
        regions: &[String],
        per_region: usize,
        client: &Client,
    ) -> anyhow::Result<Self> {
        let mut cluster = Cluster::default();
        for region in regions {
            for i in 1..=per_region {
                let name = format!("{region}-{i}");
                cluster.nodes.push(spawn(t, &name, region)?);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for idx in 0..cluster.nodes.len() {
            let mut retries = 0;
            loop {
                let node = &mut cluster.nodes[idx];
                if client.ready(node.http).await {
                    break;
                }
                if let Some(status) = exited(node)? {
                    retries += 1;
                    if retries > 3 {
                        bail!(
                            "node {} exited ({status}): {}\n(log: {})",
                            node.name,
                            last_line(&node.log),
                            node.log.display()
                        );
                    }
                    let (name, region) = (node.name.clone(), node.region.clone());
                    node.killed = true;
                    cluster.nodes[idx] = spawn(t, &name, &region)?;
                    continue;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} not ready after 30 s; see {}",
                        node.name,
                        node.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// Restarts a node gracefully on the same ports: SIGTERM (it hands its partitions off and
    /// leaves), wait for a clean exit, start it again, wait until it is ready.
    pub(crate) async fn restart(
        &mut self,
        t: &NodeTemplate,
        name: &str,
        client: &Client,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let node = self
            .get_mut(name)
            .with_context(|| format!("no node {name}"))?;
        node.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = exited(node)? {
                break status;
            }
            if Instant::now() > deadline {
                node.signal(libc::SIGKILL)?;
                bail!("node {name} did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !status.success() {
            bail!("node {name} exited uncleanly after SIGTERM: {status}");
        }
        node.killed = true;
        let (region, listen, http) = (node.region.clone(), node.listen, node.http);
        *node = spawn_at(t, name, &region, listen, http)?;
        while !client.ready(http).await {
            if Instant::now() > deadline {
                bail!(
                    "node {name} not ready again within 30 s: {}",
                    last_line(
                        &self
                            .get_mut(name)
                            .map(|n| n.log.clone())
                            .unwrap_or_default()
                    )
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// The nodes of an existing deployment at `urls` (`--target`): each node's name and
    /// region as its own `/demo/cluster/stats` reports them.
    pub(crate) async fn attach(urls: &[String], client: &Client) -> anyhow::Result<Self> {
        let mut cluster = Cluster::default();
        for url in urls {
            let http = super::args::target_addr(url).map_err(SetupError)?;
            let stats = client
                .get_json(http, "/demo/cluster/stats", Duration::from_secs(5))
                .await
                .map_err(|e| SetupError(format!("--target {url}: {e}")))?;
            let name = stats["from"]
                .as_str()
                .ok_or_else(|| SetupError(format!("--target {url}: stats without a name")))?;
            let region = stats["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
                .and_then(|n| n["region"].as_str())
                .ok_or_else(|| SetupError(format!("--target {url}: {name} lists no region")))?;
            if cluster.nodes.iter().any(|n| n.name == name) {
                return Err(SetupError(format!("--target lists {name} twice")).into());
            }
            cluster.nodes.push(NodeProc {
                name: name.to_string(),
                region: region.to_string(),
                http,
                listen: http,
                log: PathBuf::new(),
                child: None,
                killed: false,
            });
        }
        Ok(cluster)
    }

    /// The node called `name`.
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut NodeProc> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }
}

/// The last non-empty line of a log, for error messages.
fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A fresh run directory under the system temp dir (kept after the run).
pub(crate) fn fresh_run_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "liege-drill-{stamp}-{}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("could not create a run directory under {}", base.display())
}

/// Makes sure `dir` exists.
pub(crate) fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
