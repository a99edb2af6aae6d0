//! Who may call the admin endpoint, and how it is reached: HTTPS with optional client certificates from
//! the cluster CA, and plain HTTP for reads from loopback.
//!
//! Every connection is served the same `axum::Router`, after one gate that no route can bypass — it runs
//! before routing, so a route added later is covered without anyone remembering to: a request to change
//! something (any method but `GET` and `HEAD`) needs the verified certificate of an operator
//! (`domicile://v1/operator/NAME`, `domicile certs operator`). With no certificate it is refused 401;
//! with a client's or a node's, 403. Each refusal is counted (`domicile_admin_requests_refused_total`),
//! logged, and in the node's audit trail naming the caller before it is answered. A request that passes
//! carries an [`AuthorisedOperator`] — the only way a handler can name the operator in the trail.
//!
//! Reads (`/status`, `/ready`, `/metrics`, `/topology`) are open over HTTPS, certificate or not, and over
//! plain HTTP from loopback only: the port tells the two apart by the connection's first byte (a TLS
//! handshake record starts with 22), so probes and scripts on the node's own host keep `http://`. Plain
//! HTTP from anywhere else is answered 403 pointing at HTTPS — the node's state is not published to the
//! network unencrypted. A node configured with `admin_tls = false` serves plain HTTP only, and is refused
//! at start unless its admin address is loopback (`node_config`); it answers reads, and refuses every
//! change, since nothing there can authenticate an operator.
//!
//! The server presents the node's own certificate. The operator CLI checks it against the cluster CA and
//! checks that it is a node's ([`NodeServerVerifier`]); it does not compare host names, since an admin
//! address is an IP address or a name an orchestrator gives, while a node's certificate names
//! `node-N.domicile.internal`. One crypto provider, ring, as everywhere else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use audit::event::{AdminRefusal, Event};
use axum::Json;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use raft::identity::{CertifiedKey, Peer, attested_identity, attested_peer, server_name};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admin_api::AdminError;
use crate::metrics::ReasonLabel;
use crate::node::Node;
use crate::node_config::NodeConfig;

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 22;
/// How long a connection may take to send its first byte and finish its handshake, and a request its
/// headers: an idle or slow connection holds a task, not the endpoint.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is at the other end of an admin connection.
#[derive(Clone, Debug)]
pub struct AdminCaller {
    pub remote: SocketAddr,
    /// Whether the connection is HTTPS.
    pub tls: bool,
    pub credential: Credential,
}

/// What the caller's certificate attests, once the handshake verified it against the cluster CA.
#[derive(Clone, Debug)]
pub enum Credential {
    /// No certificate (or plain HTTP).
    None,
    Peer(Peer),
    /// A certificate the CA signed whose identity can't be read.
    Unreadable(String),
}

impl AdminCaller {
    fn is_from_loopback(&self) -> bool {
        self.remote.ip().to_canonical().is_loopback()
    }

    /// The caller as the audit trail names it.
    fn describe(&self) -> String {
        match &self.credential {
            Credential::None if self.tls => "no certificate".into(),
            Credential::None => "no certificate (plain HTTP)".into(),
            Credential::Peer(Peer::Node(node)) => {
                format!("node n{} at {} ({})", node.node.0, node.site, node.country)
            }
            Credential::Peer(peer) => peer.to_string(),
            Credential::Unreadable(reason) => format!("a certificate with no readable identity ({reason})"),
        }
    }
}

/// An operator whose verified certificate the gate admitted: a handler that holds one (through
/// `Extension<AuthorisedOperator>`) is serving a request the gate authorised.
#[derive(Clone, Debug)]
pub struct AuthorisedOperator {
    /// The name in the certificate.
    pub name: String,
    pub remote: SocketAddr,
}

/// Why the gate turned a request away.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// A change with no certificate: 401.
    NoCertificate,
    /// A change under a certificate that is not an operator's: 403.
    NotOperator,
    /// A read over plain HTTP from beyond loopback: 403.
    PlainBeyondLoopback,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NoCertificate => StatusCode::UNAUTHORIZED,
            Refusal::NotOperator | Refusal::PlainBeyondLoopback => StatusCode::FORBIDDEN,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::NotOperator => "not_operator",
            Refusal::PlainBeyondLoopback => "plain_beyond_loopback",
        }
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The gate: what a caller may do with `method`.
fn authorise(caller: &AdminCaller, method: &Method) -> Result<Option<AuthorisedOperator>, Refusal> {
    let operator = match &caller.credential {
        Credential::Peer(Peer::Operator(operator)) => Some(AuthorisedOperator {
            name: operator.name.clone(),
            remote: caller.remote,
        }),
        _ => None,
    };
    if !is_read(method) {
        return match (&operator, &caller.credential) {
            (Some(_), _) => Ok(operator),
            (None, Credential::None) => Err(Refusal::NoCertificate),
            (None, _) => Err(Refusal::NotOperator),
        };
    }
    if !caller.tls && !caller.is_from_loopback() {
        return Err(Refusal::PlainBeyondLoopback);
    }
    Ok(operator)
}

/// The admin endpoint's TLS: the node's certificate, client certificates optional but verified against
/// the cluster CA when presented.
pub fn server_config(ca_pem: &str, node: &CertifiedKey) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(trust_roots(ca_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .context("the cluster CA can't verify client certificates")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain(&node.cert_pem, "the node certificate")?,
            key(&node.key_pem, "the node key")?,
        )
        .context("the node certificate and key can't serve TLS")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration from the node's files (read and checked at start-up already).
pub fn node_server_config(config: &NodeConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("can't read {}", path.display()))
    };
    let node = CertifiedKey {
        cert_pem: read(&config.cert)?,
        key_pem: read(&config.key)?,
    };
    server_config(&read(&config.ca)?, &node).context("the admin endpoint's TLS configuration is unusable")
}

/// The operator's side: trusts the cluster CA alone and a node's certificate alone, and presents the
/// operator's certificate if there is one.
pub fn client_config(ca_pem: &str, operator: Option<&CertifiedKey>) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(trust_roots(ca_pem)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .context("the cluster CA can't verify node certificates")?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { inner }));
    let mut config = match operator {
        Some(operator) => builder
            .with_client_auth_cert(
                chain(&operator.cert_pem, "the operator certificate")?,
                key(&operator.key_pem, "the operator key")?,
            )
            .context("the operator certificate and key don't go together")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn trust_roots(ca_pem: &str) -> anyhow::Result<RootCertStore> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|error| anyhow::anyhow!("the CA certificate is not valid PEM: {error}"))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|error| anyhow::anyhow!("the CA certificate can't be a trust root: {error}"))?;
    Ok(roots)
}

fn chain(pem: &str, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|cert| vec![cert])
        .map_err(|error| anyhow::anyhow!("{what} is not valid PEM: {error}"))
}

fn key(pem: &str, what: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| anyhow::anyhow!("{what} is not valid PEM: {error}"))
}

/// Accepts an admin endpoint's certificate if the cluster CA issued it to a node: the chain, validity and
/// usage are webpki's checks, made for the DNS name the node identity in the certificate implies — which
/// the CA put in a node's certificate only.
#[derive(Debug)]
pub struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = attested_identity(end_entity.as_ref()).map_err(|error| {
            rustls::Error::General(format!(
                "the admin endpoint's certificate is not a node's: {error}"
            ))
        })?;
        let name = ServerName::try_from(server_name(identity.node.0))
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Serves `router` on `listener` until the task is aborted: HTTPS through `tls` when given (and plain
/// HTTP for loopback reads on the same port), plain HTTP only otherwise.
pub async fn serve(listener: TcpListener, tls: Option<Arc<ServerConfig>>, node: Arc<Node>, router: Router) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, typically: wait instead of spinning.
                tracing::warn!(%error, "the admin endpoint can't accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let node = node.clone();
        let router = router.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, remote, acceptor, node, router).await {
                tracing::debug!(%remote, error = format!("{error:#}"), "admin connection ended");
            }
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    node: Arc<Node>,
    router: Router,
) -> anyhow::Result<()> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .context("no request")??;
    if peeked == 0 {
        return Ok(());
    }
    match acceptor {
        Some(acceptor) if first[0] == TLS_HANDSHAKE_RECORD => {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
                .context("the TLS handshake timed out")?
                .context("the TLS handshake failed")?;
            let credential = match stream.get_ref().1.peer_certificates() {
                Some([cert, ..]) => match attested_peer(cert.as_ref()) {
                    Ok(peer) => Credential::Peer(peer),
                    Err(error) => Credential::Unreadable(error.to_string()),
                },
                _ => Credential::None,
            };
            let caller = AdminCaller {
                remote,
                tls: true,
                credential,
            };
            serve_http(stream, caller, node, router).await
        }
        _ => {
            let caller = AdminCaller {
                remote,
                tls: false,
                credential: Credential::None,
            };
            serve_http(stream, caller, node, router).await
        }
    }
}

async fn serve_http<S>(stream: S, caller: AdminCaller, node: Arc<Node>, router: Router) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        handle(node.clone(), router.clone(), caller.clone(), request)
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await?;
    Ok(())
}

async fn handle(
    node: Arc<Node>,
    router: Router,
    caller: AdminCaller,
    mut request: Request<Incoming>,
) -> Result<Response, Infallible> {
    match authorise(&caller, request.method()) {
        Ok(operator) => {
            request.extensions_mut().insert(ConnectInfo(caller.remote));
            if let Some(operator) = operator {
                request.extensions_mut().insert(operator);
            }
            request.extensions_mut().insert(caller);
            hyper::service::Service::call(&TowerToHyperService::new(router), request).await
        }
        Err(refusal) => Ok(refuse(&node, &caller, refusal, &request).await),
    }
}

/// Counts, logs and — for a change — records the refusal in the audit trail before answering it.
async fn refuse(
    node: &Node,
    caller: &AdminCaller,
    refusal: Refusal,
    request: &Request<Incoming>,
) -> Response {
    let status = refusal.status();
    let request_line = format!("{} {}", request.method(), request.uri().path());
    let who = caller.describe();
    node.metrics
        .admin_requests_refused
        .get_or_create(&ReasonLabel {
            reason: refusal.reason().into(),
        })
        .inc();
    let message = match refusal {
        Refusal::NoCertificate => format!(
            "{request_line} changes the cluster and needs an operator certificate (mutual TLS); this \
             request has none. Make one with `domicile certs operator --name NAME`, then call with \
             `--certs DIR --operator NAME` (or DOMICILE_CERTS and DOMICILE_OPERATOR)"
        ),
        Refusal::NotOperator => format!(
            "{request_line} changes the cluster and needs an operator certificate; {who} is not an operator"
        ),
        Refusal::PlainBeyondLoopback => "this admin endpoint answers plain HTTP on loopback only; use \
                                          https:// (the operator CLI does with `--certs DIR`, or \
                                          DOMICILE_CERTS)"
            .to_string(),
    };
    tracing::warn!(remote = %caller.remote, caller = %who, request = %request_line, "admin request refused");
    if !is_read(request.method()) {
        node.host.record(Event::AdminRefused(AdminRefusal {
            caller: who,
            remote_address: caller.remote.to_string(),
            request: request_line,
            status: status.as_u16(),
        }));
        // The refusal is answered whether or not the trail could record it; a failed trail is counted.
        let _ = node.host.audit_durable().await;
    }
    (
        status,
        Json(AdminError {
            error: message,
            leader: None,
            refusal: None,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use raft::identity::{ClientIdentity, NodeIdentity, OperatorIdentity};

    use super::*;

    fn caller(tls: bool, remote: &str, credential: Credential) -> AdminCaller {
        AdminCaller {
            remote: remote.parse().unwrap(),
            tls,
            credential,
        }
    }

    fn operator() -> Credential {
        Credential::Peer(Peer::Operator(OperatorIdentity { name: "alice".into() }))
    }

    #[test]
    fn only_an_operator_may_change_anything() {
        let client = Credential::Peer(Peer::Client(ClientIdentity::named("billing")));
        let node = Credential::Peer(Peer::Node(NodeIdentity {
            node: placement::NodeId(3),
            site: placement::SiteName("dublin".into()),
            country: placement::Country::parse("IE").unwrap(),
        }));
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let admitted = authorise(&caller(true, "10.0.0.9:5000", operator()), &method).unwrap();
            assert_eq!(admitted.map(|operator| operator.name), Some("alice".into()));
            assert_eq!(
                authorise(&caller(true, "10.0.0.9:5000", Credential::None), &method).unwrap_err(),
                Refusal::NoCertificate
            );
            assert_eq!(
                authorise(&caller(false, "127.0.0.1:5000", Credential::None), &method).unwrap_err(),
                Refusal::NoCertificate,
                "loopback is no credential"
            );
            for other in [&client, &node, &Credential::Unreadable("?".into())] {
                assert_eq!(
                    authorise(&caller(true, "127.0.0.1:5000", other.clone()), &method).unwrap_err(),
                    Refusal::NotOperator
                );
            }
        }
    }

    #[test]
    fn reads_are_open_over_tls_and_over_plain_http_from_loopback_only() {
        for method in [Method::GET, Method::HEAD] {
            assert!(authorise(&caller(true, "10.0.0.9:5000", Credential::None), &method).is_ok());
            assert!(authorise(&caller(false, "127.0.0.1:5000", Credential::None), &method).is_ok());
            assert!(authorise(&caller(false, "[::1]:5000", Credential::None), &method).is_ok());
            assert!(
                authorise(
                    &caller(false, "[::ffff:127.0.0.1]:5000", Credential::None),
                    &method
                )
                .is_ok(),
                "IPv4 loopback on a dual-stack socket is loopback"
            );
            assert_eq!(
                authorise(&caller(false, "10.0.0.9:5000", Credential::None), &method).unwrap_err(),
                Refusal::PlainBeyondLoopback
            );
        }
    }
}
