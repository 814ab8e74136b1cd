//! Preview requests: `{port}-{sandboxIdOrSignedToken}.{domain}` → `<sandbox ip>:<port>`.
//!
//! Public sandboxes are open; otherwise a signed-token host, an API key or a user's token, the
//! sandbox's preview token (header, query parameter or cookie), or a browser login's session
//! cookie (`login.rs`) grants access; a browser without any is sent to log in when OIDC is
//! configured. Errors are pages for browsers and JSON for everyone else.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::credentials::{self, AUTH_KEY_PARAM, Credential};
use crate::forward::{self, Upstream};
use crate::{PreviewHost, ProxyError, ProxyState, TOOLBOX_PORT, html_escape, login, wants_html};

const WARNING_COOKIE: &str = "daytona-preview-page-accepted";
const WARNING_SKIP_HEADER: &str = "x-daytona-skip-preview-warning";
const WARNING_ACCEPT_PATH: &str = "/accept-daytona-preview-warning";
/// Lifetime of the cookie set from `DAYTONA_SANDBOX_AUTH_KEY`.
const AUTH_COOKIE_MAX_AGE_S: u32 = 3600;

pub(crate) async fn handle(state: ProxyState, host: PreviewHost, req: Request) -> Response {
    let html = wants_html(req.headers());
    match serve(state, host, req).await {
        Ok(resp) => resp,
        Err(e) if html => e.into_html(),
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: ProxyState,
    host: PreviewHost,
    mut req: Request,
) -> Result<Response, ProxyError> {
    let settings = &state.settings;
    if settings.toolbox_only {
        return Err(ProxyError::NotFound(
            "Previews are disabled on this proxy (TOOLBOX_ONLY_MODE)".into(),
        ));
    }
    if host.port == TOOLBOX_PORT {
        return Err(ProxyError::NotFound(format!(
            "Port {TOOLBOX_PORT} is the toolbox; it is served at /toolbox/{{sandboxId}} on the proxy, not as a preview"
        )));
    }
    let target = state
        .directory
        .preview_target(&host.label, host.port)
        .await?;
    let sandbox_id = target.sandbox_id.clone();

    let mut strip = Vec::new();
    let mut set_cookie = None;
    if !target.public && !target.signed {
        match credentials::find(&req, &sandbox_id) {
            Some(found) => {
                state
                    .directory
                    .authorize(&sandbox_id, &found.credential)
                    .await?;
                if let (true, Credential::PreviewToken(token)) =
                    (found.from_query, &found.credential)
                {
                    set_cookie = Some(auth_cookie(
                        &sandbox_id,
                        token,
                        settings.cookie_domain.as_deref(),
                    ));
                }
                strip = found.strip;
            }
            None => match &settings.login {
                Some(login) => match login.session_user(req.headers(), &sandbox_id) {
                    Some(user) => state.directory.authorize_user(&sandbox_id, &user).await?,
                    // Page loads go to the issuer; everything else gets the 401.
                    None if wants_html(req.headers()) && req.method() == Method::GET => {
                        let domain = settings.cookie_domain.as_deref();
                        return login::start(login, domain, req.headers(), req.uri()).await;
                    }
                    None => return Err(missing_credentials(&sandbox_id)),
                },
                None => return Err(missing_credentials(&sandbox_id)),
            },
        }
    }
    login::strip_cookies(req.headers_mut());

    if settings.preview_warning && needs_warning(&req) {
        return Ok(warning_response(&req));
    }

    let route = state
        .directory
        .sandbox_route(&sandbox_id)
        .await
        .map_err(|e| match e {
            ProxyError::NotRunning(m) => ProxyError::BadGateway(m),
            other => other,
        })?;
    if !credentials::skips_activity(req.headers()) {
        state.directory.touch(&sandbox_id).await;
    }
    let path = req.uri().path().to_string();
    let query = credentials::query_without(req.uri().query(), &[AUTH_KEY_PARAM]);
    let upstream = Upstream {
        sandbox_id: sandbox_id.clone(),
        route,
        port: host.port,
        path_and_query: format!("{path}{query}"),
        keep_host: true,
        strip,
        activity: Some((state.directory.clone(), sandbox_id.clone())),
    };
    let port = host.port;
    let mut resp = forward::forward(&state.client, upstream, req)
        .await
        .map_err(|e| {
            if e.connect {
                state.directory.forget(&sandbox_id);
                ProxyError::BadGateway(format!(
                    "Nothing is listening on port {port} in sandbox {sandbox_id}. Start a server \
                     bound to 0.0.0.0:{port} inside the sandbox and reload."
                ))
            } else {
                ProxyError::BadGateway(format!(
                    "Port {port} of sandbox {sandbox_id} closed the connection: {}",
                    e.message
                ))
            }
        })?;
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

fn missing_credentials(sandbox_id: &str) -> ProxyError {
    ProxyError::Unauthorized(format!(
        "Sandbox {sandbox_id} is private: send 'Authorization: Bearer <API key or token>', the \
         X-Daytona-Preview-Token header or the {AUTH_KEY_PARAM} query parameter, or use a signed preview URL"
    ))
}

/// The `Domain` attribute for `COOKIE_DOMAIN`: without its port, and only for a name with a dot
/// (browsers refuse a cookie for a single-label domain).
pub(crate) fn cookie_domain(domain: Option<&str>) -> Option<&str> {
    domain
        .map(|d| d.rsplit_once(':').map_or(d, |(h, _)| h))
        .filter(|d| d.contains('.'))
}

fn auth_cookie(sandbox_id: &str, token: &str, domain: Option<&str>) -> HeaderValue {
    let mut cookie = format!(
        "{}={token}; Path=/; Max-Age={AUTH_COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax",
        credentials::cookie_name(sandbox_id)
    );
    if let Some(domain) = cookie_domain(domain) {
        cookie.push_str(&format!("; Domain={domain}"));
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A browser page load that has not accepted the warning yet.
fn needs_warning(req: &Request) -> bool {
    let headers = req.headers();
    let skip = headers
        .get(WARNING_SKIP_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let accepted = credentials::cookie(headers, WARNING_COOKIE) == Some("true");
    let accept_post = req.method() == Method::POST && req.uri().path() == WARNING_ACCEPT_PATH;
    accept_post
        || (wants_html(headers) && !headers.contains_key(header::UPGRADE) && !skip && !accepted)
}

/// The interstitial page, or (for its form's POST) the cookie and a redirect back.
fn warning_response(req: &Request) -> Response {
    if req.method() == Method::POST && req.uri().path() == WARNING_ACCEPT_PATH {
        // Only same-host paths: the form is never an open redirect.
        let back = req
            .uri()
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "redirect"))
            .map(|(_, v)| v.into_owned())
            .filter(|p| p.starts_with('/') && !p.starts_with("//"))
            .unwrap_or_else(|| "/".into());
        let mut resp = Redirect::to(&back).into_response();
        resp.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "daytona-preview-page-accepted=true; Path=/; Max-Age=86400; SameSite=Lax",
            ),
        );
        return resp;
    }
    let here = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let action: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("redirect", &here)
        .finish();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Preview warning</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>You are about to open a sandbox preview</h1>\
         <p>This page is served by code running in a Daytona sandbox, not by Daytona. Do not enter \
         passwords or other secrets unless you trust whoever runs this sandbox.</p>\
         <form method=\"post\" action=\"{WARNING_ACCEPT_PATH}?{}\"><button type=\"submit\">Continue</button></form>\
         </body></html>",
        html_escape(&action)
    );
    (StatusCode::OK, Html(page)).into_response()
}
