//! One SSH connection: token authentication, session channels (shell, exec, sftp) bridged to the
//! daemon, and direct-tcpip channels bridged to the sandbox address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};

use crate::daemon::{self, Output, PtySize};
use crate::{SshDirectory, SshTarget};

/// Where the SFTP subsystem lives inside the base image (package openssh-sftp-server).
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

pub(crate) struct Gateway {
    pub directory: Arc<dyn SshDirectory>,
}

impl russh::server::Server for Gateway {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        tracing::debug!(?peer, "ssh client connected");
        Connection {
            directory: self.directory.clone(),
            target: None,
        }
    }
}

pub(crate) struct Connection {
    directory: Arc<dyn SshDirectory>,
    target: Option<SshTarget>,
}

impl Connection {
    /// Every method authenticates by the user name (the token) alone.
    async fn authenticate(&mut self, token: &str) -> Auth {
        match self.directory.resolve(token).await {
            Ok(target) => {
                tracing::info!(sandbox = %target.sandbox_id, "ssh session authenticated");
                self.target = Some(target);
                Auth::Accept
            }
            Err(e) => {
                tracing::info!(error = %e, "ssh authentication refused");
                let mut methods = MethodSet::empty();
                methods.push(MethodKind::Password);
                methods.push(MethodKind::PublicKey);
                Auth::Reject {
                    proceed_with_methods: Some(methods),
                    partial_success: false,
                }
            }
        }
    }

    fn target(&self) -> Result<SshTarget, russh::Error> {
        self.target.clone().ok_or(russh::Error::NotAuthenticated)
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user).await)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = self.target()?;
        reply.accept().await;
        let directory = self.directory.clone();
        tokio::spawn(async move {
            directory.touch(&target.sandbox_id).await;
            run_session(channel, target).await;
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = self.target()?;
        // Forwards reach the sandbox itself, whatever name the client used for it.
        let local = matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == target.route.ip);
        let Ok(port) = u16::try_from(port) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        if !local {
            tracing::info!(sandbox = %target.sandbox_id, %host, "refused forward to a host outside the sandbox");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        match daytona_proxy::route::dial(&target.sandbox_id, &target.route, port).await {
            Ok(mut tcp) => {
                reply.accept().await;
                let directory = self.directory.clone();
                tokio::spawn(async move {
                    directory.touch(&target.sandbox_id).await;
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                });
            }
            Err(e) => {
                tracing::debug!(sandbox = %target.sandbox_id, port, error = %e, "forward target refused");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX).max(1)
}

/// Env names a client may set (as OpenSSH's default `AcceptEnv LANG LC_*`, plus TERM via pty).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// Collects the channel's setup requests until one starts a process, then bridges the channel
/// and the daemon stream until the process exits or the client goes away.
async fn run_session(channel: Channel<Msg>, target: SshTarget) {
    let (mut reader, writer) = channel.split();
    let mut pty: Option<PtySize> = None;
    let mut env = HashMap::new();
    let command = loop {
        match reader.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                pty = Some(PtySize {
                    cols: clamp(col_width),
                    rows: clamp(row_height),
                });
                env.insert("TERM".to_string(), term);
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => {
                if accepted_env(&variable_name) {
                    env.insert(variable_name, variable_value);
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break None,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Some(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                pty = None;
                break Some(SFTP_SERVER.to_string());
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };
    let start = daemon::Start { command, pty, env };
    let (mut input, mut outputs) = match daemon::start(&target, &start).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(sandbox = %target.sandbox_id, error = %e, "ssh session could not start");
            let _ = writer
                .extended_data_bytes(1, format!("daytona: {e}\r\n").into_bytes())
                .await;
            let _ = writer.exit_status(255).await;
            let _ = writer.eof().await;
            let _ = writer.close().await;
            return;
        }
    };
    let mut client_open = true;
    loop {
        tokio::select! {
            out = outputs.next() => match out {
                Some(Output::Stdout(data)) => { if writer.data_bytes(data).await.is_err() { break; } }
                Some(Output::Stderr(data)) => { if writer.extended_data_bytes(1, data).await.is_err() { break; } }
                Some(Output::Exit(code)) => {
                    let _ = writer.exit_status(code as u32).await;
                    break;
                }
                None => {
                    let _ = writer.exit_status(255).await;
                    break;
                }
            },
            msg = reader.wait(), if client_open => match msg {
                Some(ChannelMsg::Data { data }) => { input.data(&data).await; }
                Some(ChannelMsg::Eof) => { input.eof().await; }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    input.resize(clamp(col_width), clamp(row_height)).await;
                }
                Some(ChannelMsg::Close) | None => { client_open = false; break; }
                Some(_) => {}
            },
        }
    }
    if client_open {
        let _ = writer.eof().await;
        let _ = writer.close().await;
    }
    // Dropping the daemon stream (when the client left) kills the process group inside.
}
