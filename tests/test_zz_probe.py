from tests.fixtures_models import flush_prefect_logs, model_factory, trained_model_dir  # noqa: F401


def test_probe(prefect_api, model_factory, params_factory):
    from flows.deploy import deploy
    model_factory("p-1")
    assert deploy(model_id="p-1", target="local", params=params_factory())["deployed"]
    assert deploy(model_id="p-1", target="local", params=params_factory())["deployed"]
