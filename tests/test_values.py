"""sabench.values: one meaning of a value's type and one spelling of it, for suites (YAML) and
results (JSON) alike: a message about either file shows a value as that file spells it."""
import pytest

from sabench.records import ResultsError, load_results
from sabench.suite import SuiteError, load_suite
from sabench.values import is_int, is_number, is_whole, show


@pytest.mark.parametrize("v, shown", [
    (True, "true"), (False, "false"), (None, "null"), (-1.0, "-1.0"), ("abc", "'abc'"),
    ([1, 2], "a list [1, 2]"), ({"a": 1}, 'a mapping {"a": 1}'),
    (list(range(40)), "a list [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,..."),
])
def test_a_value_is_shown_as_the_file_spells_it_on_one_short_line(v, shown):
    assert show(v) == shown and len(show(v)) <= 60


def test_a_bool_is_no_number_and_a_whole_float_is_whole():
    assert not is_int(True) and not is_number(False) and is_int(3) and not is_int(3.0)
    assert is_whole(3.0) and is_whole(3) and not is_whole(3.5) and not is_whole(float("inf"))


def test_suite_and_results_messages_show_a_list_alike(tmp_path):
    """The same wrong value (a list where a scalar belongs) is shown the same way in both files."""
    (tmp_path / "s.yaml").write_text("name: [1, 2]\nmodel: tiny\nvariants: [baseline]\n"
                                     "sweep: {batch_size: [1], seq_len: [8]}\n")
    with pytest.raises(SuiteError, match=r"got a list \[1, 2\]"):
        load_suite(tmp_path / "s.yaml")
    (tmp_path / "results.json").write_text('{"schema": "sabench-results/2", "records": [[1, 2]]}')
    with pytest.raises(ResultsError, match=r"got a list \[1, 2\]"):
        load_results(tmp_path / "results.json")
