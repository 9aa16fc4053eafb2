//! The `SpiffeWorkloadAPI` gRPC service (SPIFFE spec: SPIFFE Workload API): every answer comes
//! from the agent's cache through one [`ConnectService`] per attested service name (its
//! `Identity` is kept current by the cache's leaf and roots watchers, ARCHITECTURE.md, agent),
//! and JWT-SVIDs from the in-process server's JWT keys.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::attest::Caller;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use crate::agent::{Agent, ConnectService};
use crate::tls::Snapshot;
use crate::{Error, ErrorKind};

/// The metadata key every Workload API request must carry with the value `true` (SPIFFE spec:
/// SPIFFE Workload API, "Transport"), so that a browser or SSRF cannot reach the API.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How long a unary call waits for the caller's first SVID.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How often a JWT bundle stream re-reads the bundle without a root change (old keys leave it
/// once their tokens have expired).
const JWT_BUNDLE_RECHECK: Duration = Duration::from_secs(60);

/// What the socket knows of a connection: the caller's credentials and the services they
/// entitle it to (empty: not a registered workload). A request extension of every call.
#[derive(Debug, Clone)]
pub(crate) struct Attested(pub(crate) Arc<(Caller, Vec<String>)>);

/// The service behind the socket.
pub(crate) struct WorkloadApi {
    agent: Agent,
    jwt_ttl: Duration,
    services: Mutex<HashMap<String, Arc<ConnectService>>>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A core error as a gRPC status: SPIRE's codes for the same situations.
fn status(e: &Error) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidParameter
        | ErrorKind::InvalidSpiffeId
        | ErrorKind::InvalidTrustDomain => Status::invalid_argument(msg),
        ErrorKind::PermissionDenied | ErrorKind::AclNotFound => Status::permission_denied(msg),
        ErrorKind::NotReady
        | ErrorKind::CaNotInitialized
        | ErrorKind::Timeout
        | ErrorKind::RateLimited
        | ErrorKind::CacheFetch
        | ErrorKind::Closed => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

impl WorkloadApi {
    pub(crate) fn new(agent: Agent, jwt_ttl: Duration) -> WorkloadApi {
        WorkloadApi {
            agent,
            jwt_ttl,
            services: Mutex::default(),
        }
    }

    /// The services the caller of `req` is entitled to, after the security header check
    /// (`InvalidArgument` without it) and attestation (`PermissionDenied` when nothing
    /// matched), as SPIRE answers.
    fn attested<T>(&self, req: &Request<T>) -> Result<Vec<Arc<ConnectService>>, Status> {
        let header = req.metadata().get(SECURITY_HEADER);
        if header.and_then(|v| v.to_str().ok()) != Some("true") {
            return Err(Status::invalid_argument(
                "security header missing from request",
            ));
        }
        let Some(Attested(info)) = req.extensions().get::<Attested>() else {
            return Err(Status::permission_denied("caller could not be attested"));
        };
        let (caller, names) = &**info;
        if names.is_empty() {
            tracing::info!(
                uid = caller.uid,
                gid = caller.gid,
                pid = caller.pid,
                "workload API: no registration matches the caller"
            );
            return Err(Status::permission_denied("no identity issued"));
        }
        names
            .iter()
            .map(|n| self.service(n).map_err(|e| status(&e)))
            .collect()
    }

    /// The in-process server whose keys sign and check JWT-SVIDs.
    fn jwt_server(&self) -> Result<crate::server::Server, Status> {
        self.agent.server().cloned().ok_or_else(|| {
            Status::unimplemented("JWT-SVIDs need an agent with an in-process server")
        })
    }

    /// The one `ConnectService` of `name`, started on first use and shared by every caller.
    fn service(&self, name: &str) -> Result<Arc<ConnectService>, Error> {
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = services.get(name) {
            return Ok(Arc::clone(s));
        }
        let _g = self.agent.handle().enter();
        let svc = Arc::new(self.agent.service(name)?);
        services.insert(name.to_owned(), Arc::clone(&svc));
        Ok(svc)
    }

    /// Streams `build(snapshots)` each time one of `services`' identities changes and the
    /// answer differs from the last one sent; ends when the client goes away.
    fn stream<T, F>(&self, services: Vec<Arc<ConnectService>>, build: F) -> ResponseStream<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&[Arc<Snapshot>]) -> Result<Option<T>, Error> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(2);
        let mut watches: Vec<watch::Receiver<Arc<Snapshot>>> =
            services.iter().map(|s| s.identity().watch()).collect();
        self.agent.handle().spawn(async move {
            // The services stay alive (and their watchers running) while the stream is open.
            let _services = services;
            let mut last: Option<T> = None;
            loop {
                let snapshots: Vec<Arc<Snapshot>> = watches
                    .iter_mut()
                    .map(|w| w.borrow_and_update().clone())
                    .collect();
                match build(&snapshots) {
                    Ok(Some(msg)) if last.as_ref() != Some(&msg) => {
                        let sent = tx.send(Ok(msg.clone())).await;
                        if sent.is_err() {
                            return;
                        }
                        last = Some(msg);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(status(&e))).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = any_changed(&mut watches) => {
                        if !changed {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                    () = tokio::time::sleep(JWT_BUNDLE_RECHECK) => {}
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Waits until one of `watches` sees a new value; `false` when every sender is gone.
async fn any_changed(watches: &mut [watch::Receiver<Arc<Snapshot>>]) -> bool {
    let mut futures: Vec<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = watches
        .iter_mut()
        .map(|w| Box::pin(async move { w.changed().await.is_ok() }) as _)
        .collect();
    std::future::poll_fn(move |cx| {
        let mut all_closed = true;
        for f in &mut futures {
            match f.as_mut().poll(cx) {
                Poll::Ready(true) => return Poll::Ready(true),
                Poll::Ready(false) => {}
                Poll::Pending => all_closed = false,
            }
        }
        if all_closed {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// DER certificates one after the other, as the Workload API carries chains and bundles.
fn concat_der(certs: &[rustls_pki_types::CertificateDer<'_>]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

/// The X.509-SVID response for these snapshots, once every one holds an SVID and a bundle.
pub(crate) fn x509_response(
    snapshots: &[Arc<Snapshot>],
) -> Result<Option<X509svidResponse>, Error> {
    let mut svids = Vec::with_capacity(snapshots.len());
    for snap in snapshots {
        let (Some(svid), Some(bundle)) = (snap.svid(), snap.bundle()) else {
            return Ok(None);
        };
        svids.push(X509svid {
            spiffe_id: svid.spiffe_id().to_string(),
            x509_svid: concat_der(svid.chain()),
            x509_svid_key: svid.key_pkcs8_der()?.to_vec(),
            bundle: concat_der(bundle.roots()),
            hint: String::new(),
        });
    }
    // Other datacenters of a federation share this trust domain (Consul CA docs, secondary
    // datacenters): there is no foreign trust domain to add to `federated_bundles`.
    Ok(Some(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    }))
}

/// The X.509 bundles response: the trust domain's roots, keyed by its SPIFFE ID.
fn x509_bundles(snapshots: &[Arc<Snapshot>]) -> Option<X509BundlesResponse> {
    let bundle = snapshots.first()?.bundle()?;
    let key = format!("spiffe://{}", bundle.trust_domain().as_str());
    Some(X509BundlesResponse {
        crl: Vec::new(),
        bundles: HashMap::from([(key, concat_der(bundle.roots()))]),
    })
}

/// A JSON value as a protobuf `Value` (the claims of `ValidateJWTSVID`).
fn proto_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(proto_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn proto_struct(m: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), proto_value(v))).collect(),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let services = self.attested(&request)?;
        Ok(Response::new(self.stream(services, x509_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let services = self.attested(&request)?;
        Ok(Response::new(
            self.stream(services, |s| Ok(x509_bundles(s))),
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let services = self.attested(&request)?;
        let server = self.jwt_server()?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        crate::ca::check_audiences(&req.audience).map_err(|e| status(&e))?;
        let mut svids = Vec::new();
        for svc in &services {
            svc.ready_wait(READY_WAIT).await.map_err(|e| status(&e))?;
            let snapshot = svc.identity().snapshot();
            let Some(svid) = snapshot.svid() else {
                return Err(Status::unavailable("the workload has no SVID yet"));
            };
            let id = svid.spiffe_id().clone();
            if !req.spiffe_id.is_empty() && req.spiffe_id != id.to_string() {
                continue;
            }
            let token = server
                .sign_jwt_svid_local(&id, &req.audience, self.jwt_ttl)
                .map_err(|e| status(&e))?;
            svids.push(Jwtsvid {
                spiffe_id: id.to_string(),
                svid: token,
                hint: String::new(),
            });
        }
        if svids.is_empty() {
            return Err(Status::permission_denied(
                "no identity issued for the requested SPIFFE ID",
            ));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let services = self.attested(&request)?;
        let server = self.jwt_server()?;
        // Re-read on every identity change (a rotation brings a new key) and every minute.
        Ok(Response::new(self.stream(services, move |_| {
            let (td, jwks) = server.jwt_bundle()?;
            Ok(Some(JwtBundlesResponse {
                bundles: HashMap::from([(format!("spiffe://{}", td.as_str()), jwks.into_bytes())]),
            }))
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.attested(&request)?;
        let server = self.jwt_server()?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let valid = server
            .validate_jwt_svid(&req.svid, &req.audience)
            .map_err(|e| status(&e))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.spiffe_id.to_string(),
            claims: Some(proto_struct(&valid.claims)),
        }))
    }
}
