//! Spawning `liege node` processes and talking HTTP/1.1 to them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `liege ARGS` to completion with `env` added and no cluster secret or API token
/// inherited from the test's environment.
pub(crate) fn liege(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_liege"))
        .args(args)
        .env_remove("LIEGE_SECRET")
        .env_remove("LIEGE_SECRET_FILE")
        .env_remove("LIEGE_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("liege runs")
}

/// An example program of this package (`cargo test` builds them next to the binaries).
pub(crate) fn example(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_liege"));
    let path = bin
        .parent()
        .expect("the binary is in a directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {name} not built at {}: a whole `cargo test` builds the examples, a run \
         filtered to one test target does not (`cargo build --examples` first)",
        path.display()
    );
    path
}

/// `liege node --name NAME` on the SQLite file `db`, on loopback ports the OS picks: for tests
/// that watch a node fail to start (add the rest of the arguments, then run it).
pub(crate) fn node_command(name: &str, db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_liege"));
    cmd.args(["node", "--name", name])
        .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()));
    cmd
}

/// A free loopback port (bound, then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free IPv6 loopback port (bound, then released).
pub(crate) fn free_port_v6() -> u16 {
    TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free IPv6 port")
}

/// A `liege node` child process, killed on drop.
pub(crate) struct NodeProcess {
    pub(crate) name: String,
    pub(crate) http: u16,
    /// The cluster transport port.
    pub(crate) cluster: u16,
    child: Option<Child>,
    /// The program: the `liege` binary, or an example built on `liege_cli::run`.
    exe: PathBuf,
    args: Vec<String>,
    /// Extra environment of the process.
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `liege node` with a SQLite store at `db` and waits until `/readyz` answers 200.
    pub(crate) fn start(name: &str, region: &str, db: &Path, extra: &[&str]) -> NodeProcess {
        let store = format!("sqlite:{}", db.display());
        let log_dir = db.parent().expect("db in a directory");
        Self::start_on(name, region, &store, log_dir, extra)
    }

    /// Starts `liege node` on any store URL; its log goes to `log_dir/{name}.log`.
    pub(crate) fn start_on(
        name: &str,
        region: &str,
        store: &str,
        log_dir: &Path,
        extra: &[&str],
    ) -> NodeProcess {
        Self::start_with_env(name, region, store, log_dir, extra, &[])
    }

    /// Like [`NodeProcess::start_on`] with extra environment variables. `--name` is passed
    /// only when `name` is not empty (so the node's own default can be tested; the log is
    /// then `node.log`), and `--listen` only when `extra` has none.
    pub(crate) fn start_with_env(
        name: &str,
        region: &str,
        store: &str,
        log_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProcess {
        let exe = Path::new(env!("CARGO_BIN_EXE_liege"));
        Self::start_program(exe, name, region, store, log_dir, extra, env)
    }

    /// [`NodeProcess::start_with_env`] running `exe node ...` (any binary built on
    /// `liege_cli::run`).
    pub(crate) fn start_program(
        exe: &Path,
        name: &str,
        region: &str,
        store: &str,
        log_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProcess {
        let http = free_port();
        let cluster = free_port();
        let mut args: Vec<String> = vec!["node".into()];
        if !name.is_empty() {
            args.extend(["--name".into(), name.into()]);
        }
        if !region.is_empty() {
            args.extend(["--region".into(), region.into()]);
        }
        args.extend([
            "--http".into(),
            format!("127.0.0.1:{http}"),
            "--store".into(),
            store.into(),
        ]);
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), format!("127.0.0.1:{cluster}")]);
        }
        // A short lease (fast failover tests) unless the test chose its own.
        if !extra.contains(&"--lease-ttl-ms") {
            args.extend(["--lease-ttl-ms".into(), "600".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = log_dir.join(format!(
            "{}.log",
            if name.is_empty() { "node" } else { name }
        ));
        let mut node = NodeProcess {
            name: name.into(),
            http,
            cluster,
            child: None,
            exe: exe.to_path_buf(),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
        };
        node.spawn();
        node.wait_ready();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.exe)
            .args(&self.args)
            .env("LIEGE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("liege starts");
        self.child = Some(child);
    }

    /// Waits until `/readyz` is 200 (panics with the log after 30 s).
    pub(crate) fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = try_request(self.http, "GET", "/readyz", &[], b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} not ready; log:\n{}", self.name, self.log_text());
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY-free: libc::kill on our own child's pid.
        let rc = unsafe_free_kill(c.id(), libc::SIGTERM);
        assert_eq!(rc, 0, "SIGTERM delivered");
        c.wait().expect("exit status")
    }

    /// Starts the same node again (same name, ports, store).
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    /// POST/GET helper that panics on transport errors.
    ///
    /// A `503 not_ready` is waited out for up to 10 s, as a client honouring `Retry-After`
    /// would: a node answers it before doing anything, and one of these nodes (600 ms lease on
    /// one SQLite file, the whole suite running beside it) can miss a renewal and fence itself
    /// for a moment. Every other answer is returned as it is.
    pub(crate) fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, raw) = try_request(self.http, method, path, headers, body)
                .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.name));
            let json = serde_json::from_slice(&raw)
                .unwrap_or(Value::String(String::from_utf8_lossy(&raw).into()));
            let not_ready = status == 503 && json["error"]["code"] == "not_ready";
            if !not_ready || Instant::now() >= deadline {
                return (status, json);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /demo/keys/{id}/inc` returning the new value.
    pub(crate) fn inc(&self, id: &str, idem: Option<&str>) -> i64 {
        let headers: Vec<(&str, &str)> = idem.map(|k| ("idempotency-key", k)).into_iter().collect();
        let (status, body) = self.req("POST", &format!("/demo/keys/{id}/inc"), &headers, b"");
        assert_eq!(status, 200, "inc {id} on {}: {body}", self.name);
        body["value"].as_i64().expect("integer value")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_free_kill(pid: u32, sig: i32) -> i32 {
    // libc::kill is an FFI call; the crate forbids unsafe only in the library.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, sig)
    }
}

/// The sum of the samples of `name` on `node`'s `/metrics`, whatever their labels (every
/// series carries the node's `node` and `region`); 0 when absent.
pub(crate) fn metric(node: &NodeProcess, name: &str) -> u64 {
    let (_, body) = try_request(node.http, "GET", "/metrics", &[], b"").expect("metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with(['{', ' ']))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub(crate) fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response");
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad())?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut body = raw[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).ok_or_else(bad)?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// One keep-alive HTTP/1.1 connection for floods of small requests (responses must carry a
/// `Content-Length`, as every liege route's do).
pub(crate) struct KeepAlive {
    stream: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    pub(crate) fn connect(port: u16) -> std::io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        Ok(Self {
            stream: std::io::BufReader::new(s),
        })
    }

    /// Sends one request and reads its response: (status, body).
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::BufRead;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let s = self.stream.get_mut();
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut length = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length.ok_or_else(|| bad("no content-length"))?];
        self.stream.read_exact(&mut body)?;
        Ok((status, body))
    }
}
