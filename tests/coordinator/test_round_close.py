"""The early close rule (coordinator/work/round_close.py), round by round as the devnet lives it: no
node that is expected is ever cut off, a node that joins is expected from the round after it
connected, a node that left or went quiet stops holding rounds open."""

from thinkmesh.coordinator.work.round_close import ACTIVE_ROUNDS, Attendance, UploadLog, expected_nodes, may_close_early

A, B, C, GUEST = "peer-a", "peer-b", "peer-c", "peer-guest"


def test_a_count_of_contributions_never_closes_a_round_that_someone_expected_is_still_working_on():
    expected = frozenset({A, B, C, GUEST})
    assert not may_close_early(expected, frozenset({A, B, C}), verdicts=3, close_when=3)  # the old rule's close
    assert may_close_early(expected, frozenset({A, B, C, GUEST}), verdicts=4, close_when=3)
    assert not may_close_early(expected, expected, verdicts=4, close_when=0)  # 0: the deadline only
    assert not may_close_early(frozenset(), frozenset(), verdicts=0, close_when=1)  # nobody came: the deadline


def test_the_first_round_of_a_coordinator_expects_every_connected_node():
    attendance, uploads = Attendance(), UploadLog()
    connected = attendance.observe({A, B, C}, now=0.0)
    attendance.round_opened(1, now=1.0)
    assert attendance.expected(1, connected, uploads) == {A, B, C}


def test_a_node_that_joins_is_expected_from_the_round_after_it_connected_and_stays_expected():
    attendance, uploads = Attendance(), UploadLog()
    attendance.observe({A, B, C}, now=0.0)
    attendance.round_opened(1, now=1.0)
    for peer in (A, B, C):
        uploads.ended(peer, 1)
    connected = attendance.observe({A, B, C, GUEST}, now=5.0)  # the guest connects during round 1 ...
    attendance.round_opened(2, now=10.0)
    assert attendance.expected(2, connected, uploads) == {A, B, C, GUEST}  # ... and counts in round 2
    for peer in (A, B, C, GUEST):
        uploads.ended(peer, 2)
    attendance.round_opened(3, now=20.0)
    assert attendance.expected(3, attendance.observe({A, B, C, GUEST}, now=21.0), uploads) == {A, B, C, GUEST}


def test_a_node_cut_off_as_late_once_is_expected_again():
    attendance, uploads = Attendance(), UploadLog()
    attendance.observe({A, B}, now=0.0)
    for round_id, opened in ((1, 1.0), (2, 10.0), (3, 20.0), (4, 30.0)):
        attendance.round_opened(round_id, now=opened)
    uploads.ended(A, 4)
    uploads.ended(B, 3)  # B's upload for round 3 came late, during round 4
    assert attendance.expected(5, frozenset({A, B}), uploads) == {A, B}


def test_a_node_that_left_or_went_quiet_holds_rounds_open_for_a_bounded_number_of_rounds():
    attendance, uploads = Attendance(), UploadLog()
    attendance.observe({A, B}, now=0.0)
    attendance.round_opened(1, now=1.0)
    uploads.ended(A, 1)
    uploads.ended(B, 1)
    for round_id in range(2, 2 + ACTIVE_ROUNDS):  # B is gone: expected while its last upload is recent
        attendance.round_opened(round_id, now=10.0 * round_id)
        assert attendance.expected(round_id, attendance.observe({A}, now=10.0 * round_id + 1), uploads) == {A, B}
        uploads.ended(A, round_id)
    attendance.round_opened(2 + ACTIVE_ROUNDS, now=100.0)
    assert attendance.expected(2 + ACTIVE_ROUNDS, frozenset({A}), uploads) == {A}


def test_nodes_busy_with_their_rollouts_stay_expected_while_the_coordinators_p2pd_restarts():
    """After a restart of the coordinator's p2pd nobody is connected until they next reach it, which
    a node in the middle of its rollouts does only to upload: an early close then would cut it off."""
    attendance, uploads = Attendance(), UploadLog()
    attendance.observe({A, B, C}, now=0.0)
    attendance.round_opened(1, now=1.0)
    for peer in (A, B, C):
        uploads.ended(peer, 1)
    attendance.round_opened(2, now=10.0)
    connected = attendance.observe({A}, now=12.0)  # only A reconnected so far
    assert attendance.expected(2, connected, uploads) == {A, B, C}
    assert not may_close_early(attendance.expected(2, connected, uploads), frozenset({A}), verdicts=1, close_when=1)


def test_only_peers_that_may_contribute_are_ever_expected():
    attendance, uploads = Attendance(), UploadLog()
    attendance.observe({A}, now=0.0)
    attendance.round_opened(1, now=1.0)
    uploads.ended(A, 1)
    uploads.ended("stranger", 1)  # an unregistered key's upload, refused at its header
    registered = {A}.__contains__
    assert attendance.expected(2, frozenset({A}), uploads, registered) == {A}


def test_the_upload_log_is_bounded_and_reports_who_ended_an_upload_for_a_round():
    uploads = UploadLog(limit=3)
    for i, peer in enumerate(("p1", "p2", "p3", "p4")):
        uploads.ended(peer, 7 if i % 2 else 6)
    assert list(uploads.latest()) == ["p2", "p3", "p4"]
    assert uploads.ended_for(7) == {"p2", "p4"}
    uploads.ended("p2", 8)
    assert list(uploads.latest()) == ["p3", "p4", "p2"] and uploads.ended_for(7) == {"p4"}


def test_expected_nodes_is_a_pure_function_of_its_inputs():
    first_seen = {A: 0.0, B: 50.0, C: 0.0}
    latest = {A: 9, C: 7, GUEST: 8}
    assert expected_nodes(10, {A, B, C}, first_seen, previous_opened_at=40.0, latest_upload=latest) == {A, B, GUEST}
    assert expected_nodes(9, {A, B, C}, first_seen, previous_opened_at=40.0, latest_upload=latest) == {A, B, C, GUEST}
    assert expected_nodes(10, {A, B, C}, first_seen, previous_opened_at=None, latest_upload={}) == {A, B, C}
    assert expected_nodes(10, {A}, first_seen, 40.0, latest, may_contribute=lambda peer: peer != GUEST) == {A}
