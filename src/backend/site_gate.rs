//! What a site's settings decide before its app is involved, in this order: a disabled site
//! gets its page; plain HTTP to an HTTPS-only site is redirected; a password-protected site
//! wants its password (for its static files too); a static file is served from its
//! directory. None of these starts the app or counts as its activity.

use super::basic_auth::{self, Verdict};
use super::site_settings::SiteSettings;
use super::static_files::{self, Served};
use super::{BackendCtx, BackendProxy};
use crate::pages;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Whether the request was answered here.
pub enum Gate {
    Answered,
    /// On to the app; `Strict-Transport-Security` for its answer, if any.
    ToTheApp,
}

impl BackendProxy {
    pub(super) async fn site_gate(
        &self,
        session: &mut Session,
        ctx: &mut BackendCtx,
        settings: &SiteSettings,
    ) -> Result<Gate> {
        let pages = self.front_door.pages();
        if let Some(reason) = &settings.disabled {
            pages.send_disabled(session, reason).await?;
            return Ok(Gate::Answered);
        }
        let https = ctx.request.origin.https;
        if settings.force_https && !https {
            let method = &session.req_header().method;
            // 308 keeps the method and body, which a 301 lets clients change to GET.
            let status = if method == http::Method::GET || method == http::Method::HEAD {
                301
            } else {
                308
            };
            let location = https_location(&ctx.request.site, session.req_header().raw_path());
            pages.redirect(session, status, &location).await?;
            return Ok(Gate::Answered);
        }
        ctx.hsts = settings
            .hsts
            .filter(|_| https)
            .map(|age| format!("max-age={}", age.as_secs()));
        if let Some(password) = &settings.password {
            let authorization = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|value| value.as_bytes());
            let verdict = self
                .basic_auth
                .check(
                    &ctx.request.site,
                    password,
                    authorization,
                    ctx.request.client,
                )
                .await;
            match verdict {
                Verdict::Allowed => {}
                Verdict::Denied => {
                    let challenge = basic_auth::challenge(&password.realm);
                    pages
                        .send_with_headers(
                            session,
                            &pages::PASSWORD_REQUIRED,
                            &[(http::header::WWW_AUTHENTICATE, challenge)],
                        )
                        .await?;
                    return Ok(Gate::Answered);
                }
                Verdict::TooMany(wait) => {
                    pages
                        .send_with_retry_after(session, &pages::TOO_MANY_PASSWORDS, Some(wait))
                        .await?;
                    return Ok(Gate::Answered);
                }
            }
        }
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            return Ok(Gate::ToTheApp);
        }
        let Some(found) = static_files::find(&settings.statics, session.req_header().raw_path())
        else {
            return Ok(Gate::ToTheApp);
        };
        let extra: Vec<(http::HeaderName, String)> = ctx
            .hsts
            .iter()
            .map(|value| (http::header::STRICT_TRANSPORT_SECURITY, value.clone()))
            .collect();
        match static_files::serve(session, &found, ctx.owner, &extra).await? {
            Served::Sent => {}
            Served::NotFound(why) => {
                log::debug!("site {}: static file not served: {why}", ctx.request.site);
                pages.send(session, &pages::FILE_NOT_FOUND).await?;
            }
        }
        Ok(Gate::Answered)
    }
}

/// The same address on https: the site's name (the port of a plain-HTTP Host is not the
/// HTTPS one) and the target as sent, bytes outside printable ASCII escaped.
fn https_location(site: &str, target: &[u8]) -> String {
    let mut location = format!("https://{site}");
    for &b in target {
        if b.is_ascii_graphic() {
            location.push(b as char);
        } else {
            location.push_str(&format!("%{b:02X}"));
        }
    }
    location
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_https_address_keeps_the_target_and_escapes_the_rest() {
        assert_eq!(
            https_location("a.example", b"/x?y=1"),
            "https://a.example/x?y=1"
        );
        assert_eq!(
            https_location("a.example", b"/\xc3\xa9"),
            "https://a.example/%C3%A9"
        );
    }
}
