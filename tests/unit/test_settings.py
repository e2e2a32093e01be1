"""Settings: VGATE_ environment, a TOML file, prices."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_env_and_toml_file(tmp_path, monkeypatch):
    cfg = tmp_path / "vgate.toml"
    cfg.write_text(
        'upstream_url = "http://vllm:8000/"\n'
        "max_retries = 5\n"
        '[prices."qwen3-8b"]\ninput_per_1k = 0.0\noutput_per_1k = 0.002\n'
        '[[http_tools]]\nname = "weather"\ndescription = "Weather."\nurl = "https://w.example/{city}"\n'
    )
    monkeypatch.setenv("VGATE_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("VGATE_MAX_RETRIES", "1")  # the environment wins over the file
    s = Settings()
    assert s.upstream_url == "http://vllm:8000"
    assert s.max_retries == 1
    assert s.price_for("qwen3-8b").cost(1000, 1000) == pytest.approx(0.002)
    assert s.price_for("unknown").cost(1000, 1000) == pytest.approx(0.04)  # 0.01 in + 0.03 out per 1K
    assert s.http_tools[0].name == "weather"


def test_prices_from_env_json(monkeypatch):
    monkeypatch.setenv("VGATE_PRICES", '{"m": {"input_per_1k": 1, "output_per_1k": 2}}')
    assert Settings().price_for("m").cost(500, 250) == pytest.approx(1.0)


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("VGATE_MAX_INFLIGHT_PER_UPSTREAM", "0")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("kw, names", [
    ({"agent_max_steps": 40}, ("agent_max_steps=40", "agent_max_steps_limit=32")),
    ({"retry_backoff_initial_s": 20.0}, ("retry_backoff_initial_s=20.0", "retry_backoff_max_s=10.0")),
    ({"max_inflight_per_upstream": 600}, ("max_inflight_per_upstream=600", "max_connections=512")),
])
def test_contradictory_settings_fail_at_start_naming_both(kw, names):
    with pytest.raises(ValidationError) as ei:
        Settings(**kw)
    assert all(n in str(ei.value) for n in names)


def test_the_model_queue_fits_a_full_batch_by_default():
    assert Settings().max_queued_per_model == Settings().max_batch_size
    assert Settings(max_batch_size=50).max_queued_per_model == 50
    assert Settings(max_queued_per_model=0).max_queued_per_model == 0
    assert Settings(max_queued_per_upstream=7).max_queued_per_model == 7  # the name before several upstreams


def test_upstreams_come_from_a_json_list_a_toml_table_or_the_single_url(monkeypatch, tmp_path):
    assert [u.url for u in Settings(upstream_url="http://one:8000/").upstream_configs()] == ["http://one:8000"]
    monkeypatch.setenv("VGATE_UPSTREAMS", '[{"url": "http://a:8000"}, {"url": "http://b:8000", "weight": 2}]')
    ups = Settings().upstream_configs()
    assert [(u.url, u.weight) for u in ups] == [("http://a:8000", 1.0), ("http://b:8000", 2.0)]
    monkeypatch.delenv("VGATE_UPSTREAMS")
    toml = tmp_path / "vgate.toml"
    toml.write_text('[[upstreams]]\nurl = "http://c:8000"\napi_key = "k"\n\n[[upstreams]]\nurl = "http://d:8000"\n')
    monkeypatch.setenv("VGATE_CONFIG_FILE", str(toml))
    ups = Settings().upstream_configs()
    assert [u.url for u in ups] == ["http://c:8000", "http://d:8000"]
    assert ups[0].api_key.get_secret_value() == "k" and ups[1].api_key is None


def test_upstream_and_priority_mistakes_fail_at_start():
    with pytest.raises(ValidationError, match="each URL and name may appear once"):
        Settings(upstreams=[{"url": "http://a"}, {"url": "http://a/"}])
    with pytest.raises(ValidationError, match="weight"):
        Settings(upstreams=[{"url": "http://a", "weight": 0}])
    with pytest.raises(ValidationError, match="unknown route"):
        Settings(priorities={"chat": "batch"})
    assert Settings(priorities={"agent": "batch"}).priorities["predict_batch"] == "batch"  # the rest kept


def test_upstream_entries_are_checked_at_start():
    for bad, says in (({"url": "gpu1:8000"}, "http:// or https://"), ({"url": "http://a", "apikey": "k"}, "apikey"),
                      ({"url": "http://a", "weight": "inf"}, "weight"),
                      ({"url": "http://a", "weight": 1e308}, "weight")):
        with pytest.raises(ValidationError, match=says):
            Settings(upstreams=[bad])
    with pytest.raises(ValidationError, match="give each its api_key"):
        Settings(upstreams=[{"url": "http://a"}], upstream_api_key="k")
    with pytest.raises(ValidationError, match="metrics_stale_s"):
        Settings(metrics_scrape_interval_s=2, metrics_stale_s=3)
    for header in ("accept-encoding", "Cookie", "connection", "te"):
        with pytest.raises(ValidationError, match="sets these headers itself"):
            Settings(passthrough_forward_headers=[header])
