def test_insert_then_read(k2v, pk):
    r = k2v.request("PUT", f"/test-bucket/{pk}", "sort_key=a", b"hello")
    assert r.status == 204, r.body
    r = k2v.request("GET", f"/test-bucket/{pk}", "sort_key=a")
    assert r.status == 200, r.body
    assert r.json() == ["aGVsbG8="]
    assert r.header("Content-Type") == "application/json"
    assert r.header("X-Garage-Causality-Token")
