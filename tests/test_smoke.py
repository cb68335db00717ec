from tests.helpers import checkout_event, wait_until


def test_paid_checkout_reaches_both(relay, simmer, impact):
    event = checkout_event(metadata={"simmer_anonymous_id": "anon-1", "irclickid": "click-1"})
    r = relay.post_stripe(event)
    assert r.status_code == 200, r.text
    wait_until(lambda: simmer.accepted and impact.accepted, message="both")
    print(simmer.accepted[0].parsed, impact.accepted[0].parsed)
