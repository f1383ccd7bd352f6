"""Template parsing, validation errors, options rendering and the seeded template choice."""

import pytest
import tensorflow as tf

from flan_tasks import templates
from flan_tasks.templates import Template


def test_fields_and_turned_around():
  t = Template("Q: {question}\n{options_}")
  assert t.fields() == {"question", "options", "answer"}
  assert t.asks_for_answer
  assert not Template("Write a question for {answer}.", "{question}").asks_for_answer


def test_validate_names_task_template_and_field():
  good = Template("{premise}")
  bad = Template("{premise} and {missing}")
  with pytest.raises(templates.TemplateError, match=r"task my_task: template 1 .*'missing'"):
    templates.validate("my_task", [good, bad], ["premise", "answer"])


def test_malformed_placeholders_are_rejected():
  with pytest.raises(templates.TemplateError):
    templates.validate("t", [Template("{x:>10}")], ["x", "answer"])
  with pytest.raises(templates.TemplateError):
    templates.validate("t", [Template("{unclosed")], ["answer"])


def test_render_fills_fields_and_options():
  ex = {"q": tf.constant("Is it?"), "options": tf.constant(["yes", "no"])}
  out = templates.render("Q: {q}\n{options_}", ex).numpy().decode()
  assert out == "Q: Is it?\nOPTIONS:\n- yes\n- no"


def test_choice_is_seeded_deterministic_and_covers_all():
  def index(i, seed):
    return int(templates.choose_template({"text": tf.constant(f"example {i}")}, 7, seed))

  assert [index(i, 0) for i in range(50)] == [index(i, 0) for i in range(50)]
  assert {index(i, 0) for i in range(200)} == set(range(7))
  assert [index(i, 0) for i in range(50)] != [index(i, 1) for i in range(50)]


def test_apply_random_template_uses_the_chosen_one():
  ts = [Template("A {x}"), Template("B {x}"), Template("C {x}")]
  for i in range(20):
    ex = {"x": tf.constant(str(i)), "answer": tf.constant("y")}
    out = templates.apply_random_template(ex, ts, seed=3)
    k = int(out["template_index"])
    assert out["inputs"].numpy().decode() == f"{'ABC'[k]} {i}"
