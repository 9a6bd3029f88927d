"""The fault suite's rule for answers (harness/faults.py ``answers_not_allowed``):
what a scenario may answer besides 201 must be a refusal that wrote at most
once, or named by the scenario; an invalid write must be refused."""

from harness.faults import Write, answers_not_allowed


def write(status, invalid=False):
    return Write("debt", "52998224725", "http://x", invalid=invalid, status=status)


def test_201_a_4xx_503_and_504_are_allowed():
    assert answers_not_allowed([write(201), write(404), write(409), write(503), write(504)]) == []


def test_a_timeout_or_a_500_is_refused_unless_the_scenario_names_it():
    for status in (None, 500, 502):
        assert [a[2] for a in answers_not_allowed([write(status)])] == [status]
        assert answers_not_allowed([write(status)], tolerate=(status,)) == []


def test_an_invalid_write_must_be_refused_422():
    assert answers_not_allowed([write(422, invalid=True), write(503, invalid=True)]) == []
    assert [a[2] for a in answers_not_allowed([write(201, invalid=True), write(404, invalid=True)])] == [201, 404]
    assert write(None, invalid=True).value < 0  # what makes it invalid
