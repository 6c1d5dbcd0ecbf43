//! Real `redis-server` processes for the tests: a single node or a three-master
//! Cluster, each on free loopback ports with no persistence, stopped when dropped.
//! `redis-server` and `redis-cli` come from the Debian package `redis-server`
//! (`.ci/run` installs it when missing).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// A port that is free now, with its cluster bus port (`port + 10000`) free too.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// A single node with no persistence; `extra` are more `redis-server` arguments
    /// (`--requirepass secret`).
    pub fn start(extra: &[&str]) -> RedisServer {
        // Another test may take the free port first; then try another.
        for _ in 0..5 {
            if let Some(server) = Self::try_start(free_port(), extra) {
                return server;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// A node that speaks only TLS, on the port it reports; `extra` names the
    /// certificate files (`--tls-cert-file` ...).
    pub fn start_tls(extra: &[&str]) -> RedisServer {
        Self::try_start_with(free_port(), extra, true).expect("redis-server starts with TLS")
    }

    /// A single node on a given port.
    pub fn start_on(port: u16) -> RedisServer {
        Self::try_start(port, &[]).unwrap_or_else(|| panic!("redis-server did not start on port {port}"))
    }

    fn try_start(port: u16, extra: &[&str]) -> Option<RedisServer> {
        Self::try_start_with(port, extra, false)
    }

    fn try_start_with(port: u16, extra: &[&str], tls: bool) -> Option<RedisServer> {
        let dir = TempDir::new(&format!("redis-{port}"));
        let (plain, tls_port) = if tls { ("0".to_string(), port.to_string()) } else { (port.to_string(), "0".into()) };
        let mut args: Vec<String> = [
            "--port",
            &plain,
            "--tls-port",
            &tls_port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer { port, child: None, args, dir };
        server.spawn().then_some(server)
    }

    /// Starts the process and waits until it accepts connections; false if it exited
    /// (its port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Connected, but to this server? It would have exited on a taken port.
                std::thread::sleep(Duration::from_millis(20));
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    self.child = None;
                    return false;
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open and
    /// nothing answers, the worst case for a client.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    }

    /// A synchronous connection, for inspecting what sluicegate wrote.
    pub fn connection(&self, password: Option<&str>) -> redis::Connection {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        redis::Client::open(url).unwrap().get_connection().unwrap()
    }

    /// How many times Redis ran each command since the last `CONFIG RESETSTAT`.
    pub fn command_calls(conn: &mut redis::Connection) -> std::collections::HashMap<String, u64> {
        let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
        info.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Thaw first: a stopped process does not die of SIGKILL until continued on
            // some systems' process accounting.
            self.freeze(false);
        }
        self.kill();
    }
}

/// Three masters in one Redis Cluster, slots split by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{i}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.address());
        }
        let out = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().expect("redis-cli runs");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        'wait: while Instant::now() < deadline {
            for n in &nodes {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut n.connection(None)).unwrap();
                if !info.contains("cluster_state:ok") {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'wait;
                }
            }
            return RedisCluster { nodes };
        }
        panic!("the cluster did not become ready");
    }

    /// `REDIS_URL` for sluicegate: every node.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.address()).collect::<Vec<_>>().join(",")
    }

    /// Every key on every node.
    pub fn keys(&self) -> Vec<(u16, String)> {
        let mut all = Vec::new();
        for n in &self.nodes {
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut n.connection(None)).unwrap();
            all.extend(keys.into_iter().map(|k| (n.port, k)));
        }
        all
    }
}

/// A TCP proxy in front of Redis that counts what the client sends: every read from the
/// client side is one burst of commands, so a request that costs one round trip shows as
/// one burst (a second round trip could only start after the reply came back).
pub struct CountingProxy {
    pub port: u16,
    bursts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: u16) -> CountingProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let bursts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = bursts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
            }
        });
        CountingProxy { port, bursts, task }
    }

    pub fn bursts(&self) -> u64 {
        self.bursts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
