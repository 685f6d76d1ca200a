//! The HTTP side of a pull from one repository: HTTPS with the system's CAs (a site CA
//! is added to them, or named by `SSL_CERT_FILE`), plain HTTP only for a registry the
//! user names as insecure; the 401 challenge answered once (a Bearer token from the
//! realm, or Basic credentials); redirects to blob storage followed by hand, so the
//! registry's `Authorization` header never goes to another host.

use super::auth::{Challenge, Credentials};
use super::reference::Reference;
use super::{Problem, MAX_REDIRECTS};
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;
use url::Url;

/// Largest token response read (a JWT is a few KiB).
const MAX_TOKEN: u64 = 1 << 20;

/// A client for one repository of one registry; shared by the download threads.
pub struct Client {
    agent: ureq::Agent,
    /// `https://HOST[:PORT]` (or `http://` for an insecure registry).
    base: Url,
    repository: String,
    /// The registry as users name it, for messages (`podman login HOST`).
    registry: String,
    insecure: bool,
    credentials: Option<Credentials>,
    /// The `Authorization` value the registry accepted or asked for (a Bearer token,
    /// or Basic credentials), sent on later requests to the registry host only.
    authorization: Mutex<Option<String>>,
}

/// One request's failure before it is named for the user.
enum Failure {
    Status(u16, Box<ureq::Response>),
    Network(String),
    Problem(Problem),
}

impl Client {
    pub fn new(reference: &Reference, insecure: bool, credentials: Option<Credentials>) -> Client {
        let scheme = if insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", reference.api_host()))
            .expect("a validated host makes a URL");
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent,
            base,
            repository: reference.repository.clone(),
            registry: reference.registry.clone(),
            insecure,
            credentials,
            authorization: Mutex::new(None),
        }
    }

    /// GETs `/v2/REPOSITORY/{path}` (`manifests/TAG`, `blobs/DIGEST`), authenticating
    /// when the registry asks. `what` names the object in errors.
    pub fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<ureq::Response, Problem> {
        let url = self
            .base
            .join(&format!("v2/{}/{path}", self.repository))
            .expect("a repository and a digest or tag make a URL path");
        let mut answered_challenge = false;
        loop {
            let authorization = self.authorization.lock().expect("not poisoned").clone();
            match self.get_following(&url, accept, authorization.as_deref(), what) {
                Ok(response) => return Ok(response),
                Err(Failure::Status(401, response)) if !answered_challenge => {
                    answered_challenge = true;
                    let headers = response.all("www-authenticate");
                    let header = match Challenge::pick(headers.iter().copied()) {
                        Some(Challenge::Bearer {
                            realm,
                            service,
                            scope,
                        }) => self.token(&realm, service.as_deref(), scope.as_deref(), what)?,
                        Some(Challenge::Basic) => match &self.credentials {
                            Some(c) => c.basic_header(),
                            None => return Err(self.needs_login(what)),
                        },
                        None => return Err(self.needs_login(what)),
                    };
                    *self.authorization.lock().expect("not poisoned") = Some(header);
                }
                Err(Failure::Status(401, _)) => {
                    return Err(if self.credentials.is_some() {
                        Problem::BadCredentials {
                            what: what.into(),
                            host: self.registry.clone(),
                        }
                    } else {
                        self.needs_login(what)
                    })
                }
                Err(Failure::Status(status, _)) => return Err(self.status_problem(status, what)),
                Err(Failure::Network(reason)) if is_certificate_problem(&reason) => {
                    return Err(Problem::UntrustedCertificate {
                        what: what.into(),
                        host: self.registry.clone(),
                        reason,
                    })
                }
                Err(Failure::Network(reason)) => {
                    return Err(Problem::Network {
                        what: what.into(),
                        host: self.registry.clone(),
                        tls_failed: !self.insecure && reason.to_ascii_lowercase().contains("tls"),
                        reason,
                    })
                }
                Err(Failure::Problem(p)) => return Err(p),
            }
        }
    }

    fn needs_login(&self, what: &str) -> Problem {
        Problem::NeedsLogin {
            what: what.into(),
            host: self.registry.clone(),
        }
    }

    fn status_problem(&self, status: u16, what: &str) -> Problem {
        let what = what.to_string();
        match status {
            403 => Problem::Denied { what },
            404 => Problem::NotFound { what },
            429 => Problem::RateLimited {
                what,
                host: self.registry.clone(),
            },
            status => Problem::Status { what, status },
        }
    }

    /// One GET, following redirects. `authorization` goes only to the registry's own
    /// host and port: blob storage gets its credentials in the redirect URL.
    fn get_following(
        &self,
        start: &Url,
        accept: Option<&str>,
        authorization: Option<&str>,
        what: &str,
    ) -> Result<ureq::Response, Failure> {
        let mut url = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.agent.request_url("GET", &url);
            if let Some(accept) = accept {
                request = request.set("Accept", accept);
            }
            if let Some(value) = authorization.filter(|_| self.same_origin(&url)) {
                request = request.set("Authorization", value);
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(ureq::Error::Status(status, response)) => {
                    return Err(Failure::Status(status, Box::new(response)))
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(Failure::Network(transport_reason(&t)))
                }
            };
            if !(300..400).contains(&response.status()) {
                return Ok(response);
            }
            let location = response.header("location").unwrap_or("").to_string();
            url = match url.join(&location) {
                Ok(next) if self.allowed_scheme(&next) => next,
                _ => {
                    return Err(Failure::Problem(Problem::BadRedirect {
                        what: what.into(),
                        location,
                    }))
                }
            };
        }
        Err(Failure::Problem(Problem::TooManyRedirects {
            what: what.into(),
        }))
    }

    /// HTTPS always; plain HTTP only when the user named this registry insecure.
    fn allowed_scheme(&self, url: &Url) -> bool {
        url.scheme() == "https" || (self.insecure && url.scheme() == "http")
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// A Bearer token from the realm, for `scope` (the challenge's, else pull of this
    /// repository), with the user's credentials when there are some.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        what: &str,
    ) -> Result<String, Problem> {
        let token_problem = |reason: String| Problem::Token {
            realm: realm.to_string(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| {
            token_problem(format!("not a URL ({e}); the registry is misconfigured"))
        })?;
        if !self.allowed_scheme(&url) {
            return Err(token_problem(
                "not https; refused (credentials and tokens travel only over TLS)".into(),
            ));
        }
        let own_scope = format!("repository:{}:pull", self.repository);
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope.unwrap_or(&own_scope));
        }
        let mut request = self.agent.request_url("GET", &url);
        if let Some(credentials) = &self.credentials {
            request = request.set("Authorization", &credentials.basic_header());
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(401, _)) if self.credentials.is_some() => {
                return Err(Problem::BadCredentials {
                    what: what.into(),
                    host: self.registry.clone(),
                })
            }
            Err(ureq::Error::Status(401 | 403, _)) => return Err(self.needs_login(what)),
            Err(ureq::Error::Status(status, _)) => {
                return Err(self.status_problem(status, &format!("token for {what}")))
            }
            Err(ureq::Error::Transport(t)) => return Err(token_problem(transport_reason(&t))),
        };
        let mut body = Vec::new();
        response
            .into_reader()
            .take(MAX_TOKEN)
            .read_to_end(&mut body)
            .map_err(|e| token_problem(format!("reading the answer: {e}")))?;
        parse_token(&body).ok_or_else(|| {
            token_problem("the answer has no token; the registry is misconfigured".into())
        })
    }
}

/// `Bearer TOKEN` from a token service's JSON (`token`, or OAuth2's `access_token`).
fn parse_token(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(|t| format!("Bearer {t}"))
}

/// A transport error as a short reason (ureq's text names the URL, which can carry a
/// storage signature: only the kind and the cause are kept).
fn transport_reason(t: &ureq::Transport) -> String {
    let reason = match t.message() {
        Some(message) => format!("{}: {message}", t.kind()),
        None => t.kind().to_string(),
    };
    // The cause (an untrusted certificate, a refused connection) is what the user can
    // act on; it is the TLS or socket error, which holds no URL.
    match std::error::Error::source(t) {
        Some(cause) => format!("{reason}: {cause}"),
        None => reason,
    }
}

/// The TLS handshake failed on the server's certificate (rustls: "invalid peer
/// certificate"), not on a server that speaks plain HTTP.
fn is_certificate_problem(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(reference: &str, insecure: bool) -> Client {
        Client::new(&Reference::parse(reference).unwrap(), insecure, None)
    }

    #[test]
    fn an_untrusted_certificate_is_told_from_a_plain_http_server() {
        assert!(is_certificate_problem(
            "Connection Failed: tls connection init failed: invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_problem(
            "Connection Failed: tls connection init failed: received corrupt message of type InvalidContentType"
        ));
    }

    #[test]
    fn tokens_from_either_field() {
        assert_eq!(
            parse_token(br#"{"token": "abc"}"#).as_deref(),
            Some("Bearer abc")
        );
        assert_eq!(
            parse_token(br#"{"access_token": "xyz", "expires_in": 300}"#).as_deref(),
            Some("Bearer xyz")
        );
        assert_eq!(parse_token(br#"{"token": ""}"#), None);
        assert_eq!(parse_token(br#"{"token": "a\nb"}"#), None);
        assert_eq!(parse_token(b"<html>"), None);
    }

    #[test]
    fn authorization_stays_with_the_registry_host() {
        let c = client("docker://quay.io/a/b:1", false);
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(c.same_origin(&url("https://quay.io/v2/a/b/blobs/x")));
        assert!(c.same_origin(&url("https://quay.io:443/v2/")));
        assert!(!c.same_origin(&url("https://cdn.quay.io/blob?sig=1")));
        assert!(!c.same_origin(&url("http://quay.io/v2/")));
        assert!(!c.same_origin(&url("https://quay.io:8443/v2/")));
        let hub = client("python", false);
        assert!(hub.same_origin(&url("https://registry-1.docker.io/v2/")));
        assert!(!hub.same_origin(&url("https://docker.io/v2/")));
    }

    #[test]
    fn plain_http_only_for_insecure_registries() {
        let url = |s: &str| Url::parse(s).unwrap();
        let secure = client("localhost:5000/x", false);
        assert_eq!(secure.base.as_str(), "https://localhost:5000/");
        assert!(!secure.allowed_scheme(&url("http://localhost:5000/v2/")));
        assert!(secure.allowed_scheme(&url("https://s3.example/b")));
        assert!(!secure.allowed_scheme(&url("file:///etc/passwd")));
        let insecure = client("localhost:5000/x", true);
        assert_eq!(insecure.base.as_str(), "http://localhost:5000/");
        assert!(insecure.allowed_scheme(&url("http://localhost:5000/v2/")));
        assert!(!insecure.allowed_scheme(&url("ftp://localhost/")));
    }
}
