//! The Kubernetes API source of the inventory: pods (with their owning workload), nodes,
//! services, EndpointSlices and Kube-OVN subnets, followed with kube-rs watchers.
//!
//! The OVSDB sources name the pods this node and OVN know; the API adds what only Kubernetes
//! knows (the workload behind a pod, service names, node addresses, subnets). Each watcher turns
//! its objects into small plain records ([`KubePod`], [`KubeService`], ...) and sends them as
//! [`KubeUpdate`]s; [`crate::inventory::Inventory::apply_kube`] keeps them in a [`KubeSnapshot`]
//! and merges them into its indexes.
//!
//! Size: five watchers (pods, nodes, services, EndpointSlices, subnets) of one shape with their
//! record conversions; half of it is tests against a fake API server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ::kube::api::{Api, ApiResource, DynamicObject, ResourceExt};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::WatchStreamExt as _;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Config};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::inventory::Inventory;

// kube's errors already print their causes: they are shown, not chained as `source`, so that
// `{:#}` does not print each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}: {error}", path.display())]
    Kubeconfig { path: PathBuf, error: ::kube::config::KubeconfigError },
    #[error("Kubernetes configuration found but unusable: {0}")]
    Infer(::kube::config::InferConfigError),
    #[error("creating the Kubernetes client: {0}")]
    Client(::kube::Error),
}

/// `--kubernetes`: whether the daemon looks for an API server at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// `--kubeconfig`, else `KUBECONFIG`, `~/.kube/config` or the in-cluster service account;
    /// off (one info line) when there is none.
    #[default]
    Auto,
    /// Never talk to the API.
    Off,
}

#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    pub mode: KubeMode,
    /// An explicit kubeconfig: a broken one is an error, not a silent "off".
    pub kubeconfig: Option<PathBuf>,
}

pub use crate::model::kube::{
    Change, KubeEndpointSlice, KubeNode, KubePod, KubeService, KubeSnapshot, KubeUpdate, PortProto,
    SubnetInfo,
};

trait Keyed {
    fn key(&self) -> String;
}

impl Keyed for KubePod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
impl Keyed for KubeNode {
    fn key(&self) -> String {
        self.name.clone()
    }
}
impl Keyed for KubeService {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
impl Keyed for KubeEndpointSlice {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
impl Keyed for SubnetInfo {
    fn key(&self) -> String {
        self.name.clone()
    }
}

fn apply_change<T: Keyed>(map: &mut BTreeMap<String, T>, change: Change<T>) {
    match change {
        Change::Reset(all) => *map = all.into_iter().map(|o| (o.key(), o)).collect(),
        Change::Apply(o) => {
            map.insert(o.key(), o);
        }
        Change::Delete(o) => {
            map.remove(&o.key());
        }
    }
}

impl KubeSnapshot {
    pub fn apply(&mut self, update: KubeUpdate) {
        match update {
            KubeUpdate::Pod(c) => apply_change(&mut self.pods, c),
            KubeUpdate::Node(c) => apply_change(&mut self.nodes, c),
            KubeUpdate::Service(c) => apply_change(&mut self.services, c),
            KubeUpdate::EndpointSlice(c) => apply_change(&mut self.endpoint_slices, c),
            KubeUpdate::Subnet(c) => apply_change(&mut self.subnets, c),
        }
    }

    /// Ready backends (`ip`, ports) of the service `ns/name`, from its EndpointSlices.
    pub fn service_backends(&self, service: &str) -> Vec<(IpAddr, Vec<PortProto>)> {
        let Some((ns, name)) = service.split_once('/') else { return Vec::new() };
        self.endpoint_slices
            .values()
            .filter(|s| s.namespace == ns && s.service.as_deref() == Some(name))
            .flat_map(|s| s.addresses.iter().map(|a| (*a, s.ports.clone())))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// From API objects to records.

fn port_proto(port: Option<i32>, proto: Option<&str>) -> Option<PortProto> {
    Some(PortProto {
        port: u16::try_from(port?).ok()?,
        proto: crate::model::Protocol::service_port_number(proto),
    })
}

fn parse_ips<'a>(addrs: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    addrs.into_iter().filter_map(|a| a.parse().ok()).collect()
}

/// `Kind/name` of the pod's owner. A Deployment's pods are owned by a ReplicaSet named
/// `<deployment>-<pod-template-hash>`: the hash (also the pod's `pod-template-hash` label) is
/// stripped so that every rollout of one Deployment is one workload.
pub fn workload_of(pod: &Pod) -> String {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = owners.iter().find(|o| o.controller == Some(true)).or(owners.first()) else {
        return format!("Pod/{}", pod.name_any());
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels().get("pod-template-hash")
        && let Some(deployment) = owner.name.strip_suffix(hash.as_str()).and_then(|n| n.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return format!("Deployment/{deployment}");
    }
    format!("{}/{}", owner.kind, owner.name)
}

pub fn pod_record(pod: &Pod) -> KubePod {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let finished = matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let ips = if host_network || finished {
        Vec::new()
    } else {
        let listed =
            status.and_then(|s| s.pod_ips.as_ref()).map(|ips| parse_ips(ips.iter().map(|p| p.ip.as_str())));
        // `podIPs` is the dual-stack list; older servers only fill `podIP`.
        listed
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| parse_ips(status.and_then(|s| s.pod_ip.as_deref())))
    };
    KubePod {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        node: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        ips,
        workload: workload_of(pod),
        host_iface: None,
    }
}

pub fn node_record(node: &Node) -> KubeNode {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    KubeNode {
        name: node.name_any(),
        internal_ips: parse_ips(
            addresses.iter().filter(|a| a.type_ == "InternalIP").map(|a| a.address.as_str()),
        ),
    }
}

pub fn service_record(svc: &Service) -> KubeService {
    let spec = svc.spec.as_ref();
    let ips: Vec<&str> = match spec.and_then(|s| s.cluster_ips.as_deref()) {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => spec.and_then(|s| s.cluster_ip.as_deref()).into_iter().collect(),
    };
    KubeService {
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        // "None" (headless) does not parse as an address and drops out here.
        cluster_ips: parse_ips(ips),
        ports: spec
            .and_then(|s| s.ports.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| port_proto(Some(p.port), p.protocol.as_deref()))
            .collect(),
    }
}

pub fn endpoint_slice_record(slice: &EndpointSlice) -> KubeEndpointSlice {
    let ready = |e: &&k8s_openapi::api::discovery::v1::Endpoint| {
        // The API says a nil `ready` is to be read as ready.
        e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    };
    KubeEndpointSlice {
        namespace: slice.namespace().unwrap_or_default(),
        name: slice.name_any(),
        service: slice.labels().get("kubernetes.io/service-name").cloned(),
        addresses: parse_ips(
            slice.endpoints.iter().filter(ready).flat_map(|e| e.addresses.iter().map(String::as_str)),
        ),
        ports: slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| port_proto(p.port, p.protocol.as_deref()))
            .collect(),
    }
}

/// The `subnets.kubeovn.io` resource: a CRD, so read as a dynamic object.
pub fn subnet_resource() -> ApiResource {
    ApiResource {
        group: "kubeovn.io".into(),
        version: "v1".into(),
        api_version: "kubeovn.io/v1".into(),
        kind: "Subnet".into(),
        plural: "subnets".into(),
    }
}

pub fn subnet_record(obj: &DynamicObject) -> SubnetInfo {
    let spec = obj.data.get("spec");
    let text = |field: &str| {
        spec.and_then(|s| s.get(field)).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
    };
    let vlan = text("vlan");
    SubnetInfo {
        name: obj.name_any(),
        cidr_blocks: text("cidrBlock")
            .map(|c| c.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
            .unwrap_or_default(),
        gateway: text("gateway"),
        // Kube-OVN: a subnet bound to a VLAN is underlay, whatever its gateway; else overlay.
        mode: if vlan.is_some() { "underlay" } else { "overlay" }.into(),
        vlan,
        provider: text("provider"),
        logical_gateway: spec.and_then(|s| s.get("logicalGateway")).and_then(Value::as_bool).unwrap_or(false),
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting and watching.

fn anything_configured() -> bool {
    let home_config = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config"));
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some()
        || home_config.is_some_and(|p| p.exists())
}

/// The client for `opts`, or `None` when the source is off (said once in the log). Only an
/// explicit `--kubeconfig` that cannot be used is an error: the operator asked for it.
pub async fn connect(opts: &KubeOptions) -> Result<Option<Client>, KubeError> {
    if opts.mode == KubeMode::Off {
        log::info!("Kubernetes source off (--kubernetes off)");
        return Ok(None);
    }
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|error| KubeError::Kubeconfig { path: path.clone(), error })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|error| KubeError::Kubeconfig { path: path.clone(), error })?
        }
        None => match Config::infer().await {
            Ok(c) => c,
            // Nodes without API access are a supported setup: the OVSDB sources still work.
            Err(_) if !anything_configured() => {
                log::info!(
                    "no Kubernetes API configured (no in-cluster env, no kubeconfig): Kubernetes source off"
                );
                return Ok(None);
            }
            // A node's stray kubeconfig must not stop the daemon: say so once, carry on without.
            Err(e) => {
                log::warn!("{}: Kubernetes source off", KubeError::Infer(e));
                return Ok(None);
            }
        },
    };
    log::info!("Kubernetes source: API server {}", config.cluster_url);
    Client::try_from(config).map(Some).map_err(KubeError::Client)
}

/// Logs a watcher's failures once per outage (the watcher retries with backoff on its own),
/// and the recovery.
struct ErrorLog {
    what: &'static str,
    failing: bool,
}

impl ErrorLog {
    fn error(&mut self, e: &watcher::Error) {
        // 410 Gone is the API's normal "re-list" signal after its history was compacted.
        if matches!(e, watcher::Error::WatchError(s) if s.code == 410) {
            log::debug!("Kubernetes {}: watch expired (410 Gone), re-listing", self.what);
            return;
        }
        if !self.failing {
            log::warn!("Kubernetes {}: {e} (retrying with backoff)", self.what);
            self.failing = true;
        }
    }

    fn ok(&mut self) {
        if std::mem::take(&mut self.failing) {
            log::info!("Kubernetes {}: watching again", self.what);
        }
    }
}

/// Follows one resource until the receiver is gone; lists are buffered until complete, then
/// sent as one `Reset`.
async fn follow<K, T>(
    api: Api<K>,
    what: &'static str,
    record: fn(&K) -> T,
    wrap: fn(Change<T>) -> KubeUpdate,
    tx: mpsc::Sender<KubeUpdate>,
) where
    K: ::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Vec<T> = Vec::new();
    let mut errors = ErrorLog { what, failing: false };
    while let Some(event) = stream.next().await {
        let change = match event {
            Err(e) => {
                errors.error(&e);
                continue;
            }
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listing.push(record(&o));
                continue;
            }
            Ok(Event::InitDone) => Change::Reset(std::mem::take(&mut listing)),
            Ok(Event::Apply(o)) => Change::Apply(record(&o)),
            Ok(Event::Delete(o)) => Change::Delete(record(&o)),
        };
        errors.ok();
        if tx.send(wrap(change)).await.is_err() {
            return;
        }
    }
}

/// Starts one watcher per resource, all sending into `tx`.
pub fn spawn_watchers(client: Client, tx: mpsc::Sender<KubeUpdate>) {
    tokio::spawn(follow(Api::<Pod>::all(client.clone()), "pods", pod_record, KubeUpdate::Pod, tx.clone()));
    tokio::spawn(follow(
        Api::<Node>::all(client.clone()),
        "nodes",
        node_record,
        KubeUpdate::Node,
        tx.clone(),
    ));
    tokio::spawn(follow(
        Api::<Service>::all(client.clone()),
        "services",
        service_record,
        KubeUpdate::Service,
        tx.clone(),
    ));
    tokio::spawn(follow(
        Api::<EndpointSlice>::all(client.clone()),
        "endpointslices",
        endpoint_slice_record,
        KubeUpdate::EndpointSlice,
        tx.clone(),
    ));
    tokio::spawn(follow(
        Api::<DynamicObject>::all_with(client, &subnet_resource()),
        "subnets.kubeovn.io",
        subnet_record,
        KubeUpdate::Subnet,
        tx,
    ));
}

/// Applies what the watchers send to the inventory, in batches: one index rebuild for a burst
/// of events (a re-list of every resource arrives at once).
pub async fn feed(client: Client, inventory: Arc<RwLock<Inventory>>) {
    let (tx, mut rx) = mpsc::channel::<KubeUpdate>(256);
    spawn_watchers(client, tx);
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        inventory.write().unwrap_or_else(|p| p.into_inner()).apply_kube(batch.drain(..));
    }
}

#[cfg(test)]
mod tests {
    //! The source against an in-process API server that speaks the list/watch protocol with
    //! recorded objects (tests/fixtures/kube): lists carry `metadata.resourceVersion`, watches
    //! stream newline-delimited events, and a watch can be answered with 410 Gone.

    use std::collections::{HashMap, VecDeque};
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::ovsdb::parse_updates;

    const PODS: &str = "/api/v1/pods";
    const NODES: &str = "/api/v1/nodes";
    const SERVICES: &str = "/api/v1/services";
    const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
    const SUBNETS: &str = "/apis/kubeovn.io/v1/subnets";

    fn fixture(name: &str) -> Value {
        let text = match name {
            "pods" => include_str!("../tests/fixtures/kube/pods.json"),
            "nodes" => include_str!("../tests/fixtures/kube/nodes.json"),
            "services" => include_str!("../tests/fixtures/kube/services.json"),
            "endpointslices" => include_str!("../tests/fixtures/kube/endpointslices.json"),
            "subnets" => include_str!("../tests/fixtures/kube/subnets.json"),
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(text).expect("fixture is JSON")
    }

    /// An item of a recorded list, with `kind`/`apiVersion` as a watch event carries them.
    fn item(list: &Value, name: &str) -> Value {
        let mut o = list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no item {name}"));
        let kind = list["kind"].as_str().and_then(|k| k.strip_suffix("List")).expect("a list kind");
        o["kind"] = json!(kind);
        o["apiVersion"] = list["apiVersion"].clone();
        o
    }

    /// How the server answers the next watch of a resource.
    enum Watch {
        /// 200, then an ERROR event with a 410 Status, as the API does for an expired version.
        Gone,
        /// Events as the test sends them (already serialized, one per line).
        Events(mpsc::UnboundedReceiver<Value>),
    }

    #[derive(Default)]
    struct Resource {
        /// List bodies, served in turn; the last one stays.
        lists: VecDeque<Value>,
        watches: VecDeque<Watch>,
    }

    #[derive(Default)]
    struct FakeApi {
        resources: Mutex<HashMap<&'static str, Resource>>,
        /// `LIST path` / `WATCH path rv=N`, in order.
        requests: Mutex<Vec<String>>,
    }

    impl FakeApi {
        /// Every resource served from its recorded list, watches idle.
        fn recorded() -> Self {
            let api = FakeApi::default();
            for (path, name) in [
                (PODS, "pods"),
                (NODES, "nodes"),
                (SERVICES, "services"),
                (SLICES, "endpointslices"),
                (SUBNETS, "subnets"),
            ] {
                api.lists(path, vec![fixture(name)]);
            }
            api
        }

        fn lists(&self, path: &'static str, lists: Vec<Value>) {
            self.resources.lock().expect("lock").entry(path).or_default().lists = lists.into();
        }

        fn watch(&self, path: &'static str, w: Watch) {
            self.resources.lock().expect("lock").entry(path).or_default().watches.push_back(w);
        }

        fn events(&self, path: &'static str) -> mpsc::UnboundedSender<Value> {
            let (tx, rx) = mpsc::unbounded_channel();
            self.watch(path, Watch::Events(rx));
            tx
        }

        fn requests(&self, prefix: &str) -> Vec<String> {
            self.requests.lock().expect("lock").iter().filter(|r| r.starts_with(prefix)).cloned().collect()
        }
    }

    fn query_value<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
        uri.query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    fn line(v: &Value) -> Result<Bytes, Infallible> {
        Ok(Bytes::from(format!("{v}\n")))
    }

    /// A watch body: the scripted events, then silence (a real watch stays open until its
    /// timeout; closing it at once would make the client re-watch in a tight loop).
    fn watch_body(w: Option<Watch>) -> Body {
        let pending = futures::stream::pending::<Result<Bytes, Infallible>>();
        match w {
            Some(Watch::Gone) => {
                let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": "too old resource version: 1200 (1500)", "reason": "Expired", "code": 410}});
                Body::from_stream(futures::stream::iter([line(&status)]))
            }
            Some(Watch::Events(rx)) => Body::from_stream(
                futures::stream::unfold(rx, |mut rx| async move { Some((line(&rx.recv().await?), rx)) })
                    .chain(pending),
            ),
            None => Body::from_stream(pending),
        }
    }

    async fn serve_api(State(api): State<Arc<FakeApi>>, uri: Uri) -> Response {
        let path = uri.path().to_string();
        let watching = matches!(query_value(&uri, "watch"), Some("true" | "1"));
        let mut resources = api.resources.lock().expect("lock");
        let Some((key, res)) = resources.iter_mut().find(|(p, _)| **p == path) else {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
            return (StatusCode::NOT_FOUND, axum::Json(status)).into_response();
        };
        let mut requests = api.requests.lock().expect("lock");
        if watching {
            requests.push(format!("WATCH {key} rv={}", query_value(&uri, "resourceVersion").unwrap_or("")));
            return ([("content-type", "application/json")], watch_body(res.watches.pop_front()))
                .into_response();
        }
        requests.push(format!("LIST {key}"));
        let list = if res.lists.len() > 1 { res.lists.pop_front() } else { res.lists.front().cloned() };
        axum::Json(list.unwrap_or_else(|| json!({"metadata": {"resourceVersion": "1"}, "items": []})))
            .into_response()
    }

    /// Serves `api` on a loopback port.
    async fn serve(api: Arc<FakeApi>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(serve_api).with_state(api);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Serves `api`; the source follows it into a fresh inventory.
    async fn start(api: Arc<FakeApi>) -> Arc<RwLock<Inventory>> {
        let addr = serve(api).await;
        let url = format!("http://{addr}").parse().expect("url");
        let client = Client::try_from(Config::new(url)).expect("client");
        let inventory = Arc::new(RwLock::new(Inventory::new("node1")));
        tokio::spawn(feed(client, inventory.clone()));
        inventory
    }

    /// Waits (10 s at most: backoff after a 410 is under a second) for `ok` to hold.
    async fn until(inventory: &RwLock<Inventory>, what: &str, ok: impl Fn(&Inventory) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ok(&inventory.read().expect("lock")) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn workload(inv: &Inventory, addr: &str) -> Option<String> {
        inv.pod(ip(addr)).and_then(|p| p.workload.clone())
    }

    fn converged(inv: &Inventory) -> bool {
        inv.pod(ip("10.16.0.2")).is_some()
            && inv.node_of_ip(ip("172.18.0.3")).is_some()
            && inv.subnets().len() == 3
            && inv.endpoint(ip("10.96.12.34"), 80, 6).kind == "service"
            && !inv.service_backends("default/web").is_empty()
    }

    #[tokio::test]
    async fn recorded_objects_land_in_the_inventory() {
        let api = Arc::new(FakeApi::recorded());
        let inventory = start(api.clone()).await;
        until(&inventory, "the first lists", converged).await;
        // The watches start after the lists are applied: wait for them (bounded) rather than
        // race them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while [PODS, NODES, SERVICES, SLICES, SUBNETS]
            .iter()
            .any(|p| !api.requests("WATCH").contains(&format!("WATCH {p} rv=1200")))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inv = inventory.read().expect("lock");

        let web = inv.pod(ip("10.16.0.2")).expect("web pod");
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("default", "web-7d4b9c8f6d-x2x4q"));
        assert_eq!((web.node.as_deref(), web.source.as_str()), (Some("node1"), "kubernetes"));
        assert_eq!(web.workload.as_deref(), Some("Deployment/web"), "ReplicaSet hash stripped");
        assert_eq!(workload(&inv, "10.16.0.5").as_deref(), Some("StatefulSet/db"));
        assert_eq!(workload(&inv, "fd00:10:16::5").as_deref(), Some("StatefulSet/db"), "dual-stack");
        assert_eq!(workload(&inv, "10.16.0.7").as_deref(), Some("Job/backup-29401920"));
        assert!(inv.pod(ip("10.16.0.8")).is_none(), "a finished pod's address is free");
        assert!(inv.pod(ip("172.18.0.2")).is_none(), "a host-network pod does not claim the node's address");

        let db = inv.endpoint(ip("10.16.0.5"), 5432, 6);
        assert_eq!((db.kind.as_str(), db.workload.as_deref()), ("pod", Some("StatefulSet/db")));
        let node1 = inv.endpoint(ip("172.18.0.2"), 22, 6);
        assert_eq!((node1.kind.as_str(), node1.node.as_deref()), ("node", Some("node1")));
        assert_eq!(inv.node_of_ip(ip("fc00:f853:ccd:e793::3")), Some("node2"));

        let svc = inv.endpoint(ip("10.96.12.34"), 80, 6);
        assert_eq!(
            (svc.kind.as_str(), svc.namespace.as_deref(), svc.service.as_deref()),
            ("service", Some("default"), Some("default/web"))
        );
        assert_eq!(inv.scenario(&inv.endpoint(ip("10.16.0.5"), 40000, 6), &svc), "pod_to_service");
        assert_eq!(inv.endpoint(ip("10.96.0.10"), 53, 17).service.as_deref(), Some("kube-system/kube-dns"));
        assert_eq!(inv.endpoint(ip("10.96.12.34"), 81, 6).kind, "external", "not a service port");
        assert_eq!(inv.endpoint(ip("10.96.12.34"), 80, 17).kind, "external", "not the service's protocol");
        assert_eq!(
            inv.service_backends("default/web"),
            vec![(ip("10.16.0.2"), vec![PortProto { port: 8080, proto: 6 }])],
            "the terminating endpoint is not a backend"
        );

        let subnets: Vec<(&str, &str)> =
            inv.subnets().iter().map(|s| (s.name.as_str(), s.mode.as_str())).collect();
        assert_eq!(subnets, [("join", "overlay"), ("ovn-default", "overlay"), ("vlan10", "underlay")]);
        let vlan10 = inv.subnets()[2];
        assert_eq!(vlan10.cidr_blocks, ["192.168.10.0/24", "fd00:10::/64"]);
        assert_eq!(vlan10.vlan.as_deref(), Some("vlan10"));
        assert_eq!(inv.subnets()[1].gateway.as_deref(), Some("10.16.0.1"));

        for path in [PODS, NODES, SERVICES, SLICES, SUBNETS] {
            assert!(
                api.requests("WATCH").contains(&format!("WATCH {path} rv=1200")),
                "{path} watched from the list's version: {:?}",
                api.requests("")
            );
        }
    }

    #[tokio::test]
    async fn watch_events_modify_add_and_delete() {
        let api = Arc::new(FakeApi::recorded());
        let pods = api.events(PODS);
        let services = api.events(SERVICES);
        let subnets = api.events(SUBNETS);
        let inventory = start(api.clone()).await;
        until(&inventory, "the first lists", converged).await;
        assert!(
            inventory.read().expect("lock").pods().iter().all(|p| p.name != "api-5f6b8c9d7-m4n5b"),
            "pending"
        );

        // The pending pod is scheduled and gets its address.
        let (pod_list, svc_list, subnet_list) = (fixture("pods"), fixture("services"), fixture("subnets"));
        let mut api_pod = item(&pod_list, "api-5f6b8c9d7-m4n5b");
        api_pod["metadata"]["resourceVersion"] = json!("1201");
        api_pod["spec"]["nodeName"] = json!("node2");
        api_pod["status"] =
            json!({"phase": "Running", "podIP": "10.16.0.9", "podIPs": [{"ip": "10.16.0.9"}]});
        let mut db = item(&pod_list, "db-0");
        db["metadata"]["resourceVersion"] = json!("1202");
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"resourceVersion": "1203"}}});
        for event in [
            json!({"type": "MODIFIED", "object": api_pod}),
            json!({"type": "DELETED", "object": db}),
            bookmark,
        ] {
            pods.send(event).expect("watch open");
        }
        let mut new_svc = item(&svc_list, "web");
        new_svc["metadata"]["name"] = json!("api");
        new_svc["metadata"]["namespace"] = json!("shop");
        new_svc["metadata"]["resourceVersion"] = json!("1204");
        new_svc["spec"]["clusterIP"] = json!("10.96.40.1");
        new_svc["spec"]["clusterIPs"] = json!(["10.96.40.1"]);
        services.send(json!({"type": "ADDED", "object": new_svc})).expect("watch open");
        let mut vlan10 = item(&subnet_list, "vlan10");
        vlan10["metadata"]["resourceVersion"] = json!("1205");
        vlan10["spec"]["vlan"] = json!("");
        subnets.send(json!({"type": "MODIFIED", "object": vlan10})).expect("watch open");

        until(&inventory, "the watch events", |inv| {
            inv.pod(ip("10.16.0.9")).is_some()
                && inv.pod(ip("10.16.0.5")).is_none()
                && inv.endpoint(ip("10.96.40.1"), 80, 6).kind == "service"
                && inv.subnets().iter().all(|s| s.mode == "overlay")
        })
        .await;
        let inv = inventory.read().expect("lock");
        let api_ep = inv.endpoint(ip("10.16.0.9"), 8080, 6);
        assert_eq!(
            (api_ep.pod.as_deref(), api_ep.node.as_deref(), api_ep.workload.as_deref()),
            (Some("api-5f6b8c9d7-m4n5b"), Some("node2"), Some("Deployment/api"))
        );
        assert!(inv.pod(ip("fd00:10:16::5")).is_none(), "every address of a deleted pod goes");
        assert_eq!(inv.endpoint(ip("10.96.40.1"), 80, 6).service.as_deref(), Some("shop/api"));
        assert_eq!(inv.endpoint(ip("10.96.12.34"), 80, 6).service.as_deref(), Some("default/web"), "kept");
    }

    #[tokio::test]
    async fn gone_watch_relists_and_converges() {
        let api = Arc::new(FakeApi::recorded());
        // While the watch was down, db-0 went away and cache-0 came.
        let first = fixture("pods");
        let mut second = first.clone();
        let mut cache = item(&first, "db-0");
        cache["metadata"]["name"] = json!("cache-0");
        cache["metadata"]["ownerReferences"][0]["name"] = json!("cache");
        cache["status"]["podIPs"] = json!([{"ip": "10.16.0.11"}]);
        let items = second["items"].as_array_mut().expect("items");
        items.retain(|i| i["metadata"]["name"] != "db-0");
        items.push(cache);
        second["metadata"]["resourceVersion"] = json!("1500");
        api.lists(PODS, vec![first, second]);
        api.watch(PODS, Watch::Gone);
        let inventory = start(api.clone()).await;

        until(&inventory, "the re-list", |inv| {
            converged(inv) && inv.pod(ip("10.16.0.11")).is_some() && inv.pod(ip("10.16.0.5")).is_none()
        })
        .await;
        {
            let inv = inventory.read().expect("lock");
            assert_eq!(workload(&inv, "10.16.0.11").as_deref(), Some("StatefulSet/cache"));
            assert_eq!(workload(&inv, "10.16.0.2").as_deref(), Some("Deployment/web"), "still there");
        }
        let pod_requests: Vec<String> = api.requests("").into_iter().filter(|r| r.contains(PODS)).collect();
        assert_eq!(
            pod_requests[..3],
            [format!("LIST {PODS}"), format!("WATCH {PODS} rv=1200"), format!("LIST {PODS}")],
            "410 Gone sends the client back to a list"
        );
        until(&inventory, "the watch after the re-list", |_| {
            api.requests("WATCH").contains(&format!("WATCH {PODS} rv=1500"))
        })
        .await;
    }

    #[tokio::test]
    async fn connect_honours_the_flags() {
        let off = KubeOptions { mode: KubeMode::Off, kubeconfig: Some("/nonexistent".into()) };
        assert!(connect(&off).await.expect("off is not an error").is_none());
        let missing =
            KubeOptions { mode: KubeMode::Auto, kubeconfig: Some("/nonexistent/kubeconfig".into()) };
        assert!(
            matches!(connect(&missing).await, Err(KubeError::Kubeconfig { .. })),
            "an explicit path must work"
        );

        // A kubeconfig naming the in-process server: the source follows it.
        let addr = serve(Arc::new(FakeApi::recorded())).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\ncurrent-context: lab\n\
             users:\n- name: lab\n  user:\n    token: t0k3n\n"
        );
        std::fs::write(&path, kubeconfig).expect("write");
        let opts = KubeOptions { mode: KubeMode::Auto, kubeconfig: Some(path) };
        let client = connect(&opts).await.expect("usable").expect("on");
        let inventory = Arc::new(RwLock::new(Inventory::new("node1")));
        tokio::spawn(feed(client, inventory.clone()));
        until(&inventory, "the lists via the kubeconfig", converged).await;
    }

    /// Real clusters speak TLS: the rustls client must build with the one provider compiled in.
    #[tokio::test]
    async fn a_tls_client_builds() {
        let config = Config::new("https://127.0.0.1:6443".parse().expect("url"));
        assert!(Client::try_from(config).is_ok());
    }

    #[test]
    fn workloads_follow_owner_references() {
        let pod = |owner: Value, labels: Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p-1", "namespace": "ns", "labels": labels,
                "ownerReferences": owner}}))
            .expect("pod")
        };
        let owner = |kind: &str, name: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]);
        let hash = json!({"pod-template-hash": "abc12"});
        assert_eq!(workload_of(&pod(owner("ReplicaSet", "web-abc12"), hash.clone())), "Deployment/web");
        assert_eq!(
            workload_of(&pod(owner("ReplicaSet", "bare"), json!({}))),
            "ReplicaSet/bare",
            "no Deployment"
        );
        assert_eq!(workload_of(&pod(owner("ReplicaSet", "other-zzz99"), hash)), "ReplicaSet/other-zzz99");
        assert_eq!(workload_of(&pod(owner("DaemonSet", "agent"), json!({}))), "DaemonSet/agent");
        assert_eq!(workload_of(&pod(json!([]), json!({}))), "Pod/p-1");
        let two = json!([{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "a"},
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "b", "controller": true}]);
        assert_eq!(
            workload_of(&pod(two, json!({}))),
            "StatefulSet/db",
            "the controller, not the first owner"
        );
    }

    #[test]
    fn this_nodes_ovsdb_wins_for_its_pods_and_ovn_vips_stay_a_fallback() {
        let mut inv = Inventory::new("node1");
        inv.apply(
            parse_updates(&json!({
                "Interface": {"i1": {"new": {"name": "abc000000001_h", "type": "", "ofport": 3, "options": ["map", []],
                    "external_ids": ["map", [["pod_name", "web-7d4b9c8f6d-x2x4q"], ["pod_namespace", "default"],
                        ["ip", "10.16.0.2"], ["attached-mac", "0a:00:00:00:00:01"]]]}}},
                "Load_Balancer": {"l": {"new": {"name": "cluster-tcp-loadbalancer", "protocol": ["set", []],
                    "vips": ["map", [["10.96.99.1:443", "10.16.0.2:8443"]]]}}}
            }))
            .expect("valid updates"),
        );
        let pods = fixture("pods");
        let records: Vec<KubePod> = pods["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| pod_record(&serde_json::from_value(p.clone()).expect("pod")))
            .collect();
        inv.apply_kube([KubeUpdate::Pod(Change::Reset(records))]);
        let web = inv.pod(ip("10.16.0.2")).expect("web");
        assert_eq!((web.source.as_str(), web.host_iface.as_deref()), ("ovsdb", Some("abc000000001_h")));
        assert_eq!(web.workload.as_deref(), Some("Deployment/web"), "the API fills the workload");
        let vip = inv.endpoint(ip("10.96.99.1"), 443, 6);
        assert_eq!(
            (vip.kind.as_str(), vip.namespace.as_deref()),
            ("service", None),
            "OVN VIP without a Service"
        );
        // An OVSDB update keeps what the API said.
        inv.apply(
            parse_updates(&json!({"Open_vSwitch": {"o": {"new": {"external_ids": ["map", []]}}}}))
                .expect("valid"),
        );
        assert_eq!(workload(&inv, "10.16.0.2").as_deref(), Some("Deployment/web"));
        inv.apply_kube([KubeUpdate::Pod(Change::Reset(Vec::new()))]);
        assert_eq!(inv.pod(ip("10.16.0.2")).map(|p| p.workload.clone()), Some(None), "OVSDB alone");
        assert!(inv.pod(ip("10.16.0.5")).is_none());
    }
}
