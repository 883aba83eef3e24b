//! Finding the monitors through the Kubernetes API: the pods of the kovn-monitor DaemonSet, by
//! label. They run on the host network, so a pod's IP is its node's and the API is there.

use ::kube::api::{Api, ListParams};
use k8s_openapi::api::core::v1::Pod;

use super::TopError;

/// `http://<pod IP>:<port>` of every running pod matching `selector` in `namespace`, in node
/// name order (so the screen lists the monitors the same way each time).
pub async fn kubernetes_endpoints(
    client: ::kube::Client,
    namespace: &str,
    selector: &str,
    port: u16,
) -> Result<Vec<String>, TopError> {
    let pods = Api::<Pod>::namespaced(client, namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| TopError::Kubernetes(format!("listing pods {selector:?} in {namespace}: {e}")))?;
    let mut found: Vec<(String, String)> = pods
        .items
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip: std::net::IpAddr = status.pod_ip.as_ref()?.parse().ok()?;
            let host = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            Some((node, format!("http://{host}:{port}")))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(TopError::Kubernetes(format!("no running pod {selector:?} in {namespace}")));
    }
    Ok(found.into_iter().map(|(_, url)| url).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-route API server: the pod list of kube-system, whatever the selector (the test
    /// checks the selector arrives).
    async fn serve(seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/api/v1/namespaces/kube-system/pods",
            axum::routing::get(move |uri: axum::http::Uri| {
                seen.lock().expect("lock").push(uri.query().unwrap_or("").to_string());
                async {
                    axum::Json(serde_json::json!({
                        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                        "items": [
                            {"metadata": {"name": "kovn-b"}, "spec": {"nodeName": "node2", "containers": []},
                             "status": {"phase": "Running", "podIP": "10.0.0.2"}},
                            {"metadata": {"name": "kovn-a"}, "spec": {"nodeName": "node1", "containers": []},
                             "status": {"phase": "Running", "podIP": "fd00::1"}},
                            {"metadata": {"name": "kovn-c"}, "spec": {"nodeName": "node3", "containers": []},
                             "status": {"phase": "Pending"}}
                        ]
                    }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn running_daemonset_pods_become_endpoints_in_node_order() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let url = serve(seen.clone()).await;
        let client =
            ::kube::Client::try_from(::kube::Config::new(url.parse().expect("url"))).expect("client");
        let got = kubernetes_endpoints(client.clone(), "kube-system", "app=kovn-monitor", 9474).await;
        assert_eq!(got.expect("endpoints"), ["http://[fd00::1]:9474", "http://10.0.0.2:9474"]);
        assert!(seen.lock().expect("lock")[0].contains("labelSelector=app%3Dkovn-monitor"), "{seen:?}");
        let none = kubernetes_endpoints(client, "other", "app=kovn-monitor", 9474).await;
        assert!(matches!(none, Err(TopError::Kubernetes(_))), "{none:?}");
    }
}
