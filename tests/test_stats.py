"""Stats scopes and their Prometheus text: Envoy's names, and valid exposition format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.stats import StatsStore


def test_prometheus_text_uses_envoy_names_and_parses_as_prometheus():
    store = StatsStore()
    cluster = store.cluster_scope("backend")
    cluster.upstream_rq_total += 3
    cluster.count_response(200)
    cluster.count_response(503)
    cluster.upstream_cx_active = 2
    http = store.http_scope("ingress_http")
    for _ in range(4):
        http.downstream_rq_total += 1
        http.count_class(200)
    text = store.prometheus_text()
    # prometheus-client's own parser must accept every line we write.  (It renames
    # counter samples to *_total, so the exact names are checked on the text.)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["envoy_cluster_upstream_cx_active"].type == "gauge"
    assert families["envoy_cluster_upstream_cx_active"].samples[0].value == 2
    lines = set(text.splitlines())
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 3' in lines
    assert ('envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="backend"} 1'
            in lines)
    assert ('envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",'
            'envoy_cluster_name="backend"} 1' in lines)
    assert ('envoy_http_downstream_rq_xx{envoy_response_code_class="2",'
            'envoy_http_conn_manager_prefix="ingress_http"} 4' in lines)
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in lines


def test_dotted_view_matches_envoys_stats_page_names():
    store = StatsStore()
    store.cluster_scope("b").count_response(404)
    names = {name: value for name, value, _ in store.dotted()}
    assert names["cluster.b.upstream_rq_404"] == 1
    assert names["cluster.b.upstream_rq_4xx"] == 1
    assert names["cluster.b.upstream_rq_completed"] == 1


def test_label_values_are_escaped():
    store = StatsStore()
    store.cluster_scope('we"ird\\name').upstream_rq_total += 1
    families = list(text_string_to_metric_families(store.prometheus_text()))
    labels = [s.labels for f in families for s in f.samples if s.name == "envoy_cluster_upstream_rq_total"]
    assert labels == [{"envoy_cluster_name": 'we"ird\\name'}]
