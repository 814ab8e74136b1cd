//! Outgoing mail (`SMTP_*`): organization invitations. Without `SMTP_HOST` nothing is sent and
//! invitations are only listed to the invitee through the API.
//!
//! TLS to the mail server (SMTPS or STARTTLS) trusts the CAs of `NODE_EXTRA_CA_CERTS` besides
//! the system's. `HTTP_PROXY`/`HTTPS_PROXY` do not apply: SMTP is not HTTP, and the connection
//! goes straight to `SMTP_HOST`.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use daytona_config::SmtpConfig;

/// Port of SMTP with TLS from the first byte (SMTPS); elsewhere STARTTLS is used when offered.
const SMTPS_PORT: u16 = 465;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP_EMAIL_FROM: {0}")]
    From(String),
    #[error("cannot prepare TLS for {host}: {source}")]
    Tls {
        host: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("{0}")]
    Message(String),
    #[error("sending mail through {server} failed: {source}")]
    Send {
        server: String,
        source: lettre::transport::smtp::Error,
    },
}

/// What an invitation mail says.
pub struct Invitation<'a> {
    pub id: &'a str,
    pub email: &'a str,
    pub organization: &'a str,
    pub role: &'a str,
    pub invited_by: &'a str,
    pub expires_at: &'a str,
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    from: Mailbox,
    dashboard_url: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// `SMTP_SECURE=true`: TLS from the first byte; `false`: STARTTLS when the server offers it;
    /// unset: TLS from the first byte on port 465, else STARTTLS when offered.
    pub fn new(
        config: &SmtpConfig,
        dashboard_url: &str,
        outbound: &daytona_outbound::Outbound,
    ) -> Result<Self, MailError> {
        let from: Mailbox = config
            .email_from
            .parse()
            .map_err(|e| MailError::From(format!("'{}': {e}", config.email_from)))?;
        let tls_error = |source| MailError::Tls {
            host: config.host.clone(),
            source,
        };
        let mut tls_parameters = TlsParameters::builder(config.host.clone());
        for pem in outbound.extra_root_pems() {
            tls_parameters =
                tls_parameters.add_root_certificate(Certificate::from_pem(pem).map_err(tls_error)?);
        }
        let tls_parameters = tls_parameters.build().map_err(tls_error)?;
        let implicit = config.secure.unwrap_or(config.port == SMTPS_PORT);
        let tls = if implicit {
            Tls::Wrapper(tls_parameters)
        } else {
            Tls::Opportunistic(tls_parameters)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls);
        if let Some(user) = &config.user {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            server: format!("{}:{}", config.host, config.port),
            from,
            dashboard_url: dashboard_url.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn send_invitation(&self, invitation: &Invitation<'_>) -> Result<(), MailError> {
        let to: Mailbox = invitation
            .email
            .parse()
            .map_err(|e| MailError::Message(format!("recipient '{}': {e}", invitation.email)))?;
        let body = format!(
            "{inviter} invited you to join the organization \"{org}\" on Daytona as {role}.\n\n\
             Accept or decline it in the dashboard: {dashboard}\n\
             or through the API: POST /api/organizations/invitations/{id}/accept\n\n\
             The invitation expires at {expires}.\n",
            inviter = invitation.invited_by,
            org = invitation.organization,
            role = invitation.role,
            dashboard = self.dashboard_url,
            id = invitation.id,
            expires = invitation.expires_at,
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!(
                "Invitation to join {} on Daytona",
                invitation.organization
            ))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Message(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|source| MailError::Send {
                server: self.server.clone(),
                source,
            })?;
        Ok(())
    }
}
