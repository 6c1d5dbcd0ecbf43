//! Binding every listener before anything is served: gRPC (one `SO_REUSEPORT` socket per
//! worker, or a unix socket), HTTP and debug. A bind failure names the listener and the
//! address.

use std::net::SocketAddr;

use crate::grpc::GrpcListener;
use crate::settings::{Listen, Settings};

use super::StartError;

fn bind_error(listener: &'static str, address: String) -> impl FnOnce(std::io::Error) -> StartError {
    move |error| StartError::Bind { listener, address, error }
}

pub(super) fn bind_plain(listener: &'static str, host: &str, port: u16) -> Result<std::net::TcpListener, StartError> {
    let shown = format!("{host}:{port}");
    let addr = Listen::socket_addr(host, port).map_err(bind_error(listener, shown.clone()))?;
    let l = std::net::TcpListener::bind(addr).map_err(bind_error(listener, shown.clone()))?;
    l.set_nonblocking(true).map_err(bind_error(listener, shown))?;
    Ok(l)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

pub(super) fn bind_grpc(settings: &Settings) -> Result<(Vec<GrpcListener>, Option<SocketAddr>), StartError> {
    match &settings.grpc {
        Listen::Unix(path) => {
            let shown = path.display().to_string();
            // A socket file left by a previous run would make bind fail.
            if std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                let _ = std::fs::remove_file(path);
            }
            let l = std::os::unix::net::UnixListener::bind(path).map_err(bind_error("gRPC", shown.clone()))?;
            l.set_nonblocking(true).map_err(bind_error("gRPC", shown))?;
            Ok((vec![GrpcListener::Unix(l)], None))
        }
        Listen::Tcp { host, port } => {
            let shown = format!("{host}:{port}");
            let workers = if settings.grpc_workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                settings.grpc_workers
            };
            let addr = Listen::socket_addr(host, *port).map_err(bind_error("gRPC", shown.clone()))?;
            let first = reuseport_listener(addr).map_err(bind_error("gRPC", shown.clone()))?;
            // Port 0 picks a port once; every other worker binds that same port.
            let bound = first.local_addr().map_err(StartError::Io)?;
            let mut listeners = vec![GrpcListener::Tcp(first)];
            for _ in 1..workers {
                let l = reuseport_listener(bound).map_err(bind_error("gRPC", bound.to_string()))?;
                listeners.push(GrpcListener::Tcp(l));
            }
            Ok((listeners, Some(bound)))
        }
    }
}
