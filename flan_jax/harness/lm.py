"""FlanJaxLM: flan_jax's own JAX model as an lm-evaluation-harness model, registered as "flan_jax".

lm-eval asks three things of a model: log-likelihoods of continuations (multiple choice and the like),
rolling log-likelihoods of whole documents (perplexity) and greedy generations. This class answers them with
the same tokenization as lm-eval's `hf` backend for the same tokenizer (TemplateLM's context/continuation
split, its BOS rule, its rolling windows, its left truncation and its stop strings), and with flan_jax's
Transformer on the device mesh for the numbers (scoring.py). `tests/harness/` holds the results to `--model hf`
on the same tiny Llama.

    lm_eval.simple_evaluate(model="flan_jax", model_args="checkpoint=PATH,batch_size=16", tasks=[...])
    lm_eval.simple_evaluate(model=FlanJaxLM(checkpoint=PATH), tasks=[...])

Model arguments: checkpoint (a Hugging Face directory, a .gguf file or a flan_jax run: loading.py),
batch_size (rows per compiled batch; "auto" takes the default), max_length (default: the model's
max_position_embeddings, as the `hf` backend reads it), max_gen_toks (default 256), add_bos_token
(True/False; default: the tokenizer's own rule, or for a run the rule it trained with), dtype (float32,
bfloat16, float16 or auto), prefix_token_id (the token an empty context starts from; default BOS, else EOS),
seed (the sampling seed, default 1234 as lm-eval's own).

Generation is greedy unless a request asks for sampling (do_sample=True, or a temperature above 0 with do_sample
unset, as lm-eval normalises them), then it samples with the request's temperature, top_k and top_p (no top_k
unless the request sets one: transformers' generate would apply its generation config's top_k of 50). Other
generation arguments (num_beams, repetition_penalty, ...) are refused rather than ignored.

Multi-host: every process builds the same FlanJaxLM and runs the same evaluation (lm-eval's `rank` 0 of a world of
1 on each, as under its tensor-parallel launchers); the model's work is one sharded computation across them
(scoring.py), and only the first process shows progress bars.
"""

import logging
from typing import Any, Optional

import jax
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models import utils as model_utils
from tqdm import tqdm

from flan_jax.errors import UserError
from flan_jax.harness import loading, scoring
from flan_jax.model.transformer import Transformer

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256  # as lm-eval's hf backend
DEFAULT_SEED = 1234  # lm-eval's default --seed for its model backends (the third of its four seeds)
# The generation arguments a request may carry besides until and max_gen_toks (and their aliases).
GENERATION_ARGS = ("do_sample", "temperature", "top_k", "top_p")


class HeldUntilRunning(logging.Handler):
  """Holds log records until the model receives its first request, then hands them and every later one to
  `target`. `python -m flan_jax.harness` sets it on lm-eval's logger, so that a run that fails while it starts (an
  unknown task, an empty checkpoint, a dataset that is not available offline) prints its one error line alone."""

  def __init__(self, target: logging.Handler):
    super().__init__()
    self.target, self.held = target, []

  def emit(self, record: logging.LogRecord) -> None:
    if self.held is None:
      self.target.handle(record)
    else:
      self.held.append(record)

  def pass_on(self) -> None:
    held, self.held = self.held or [], None
    for record in held:
      self.target.handle(record)


def pass_on_held_logs() -> None:
  """Writes out lm-eval's held log records (HeldUntilRunning): the model got its first request, so the start-up
  went well (or the command ended and what was held is its record)."""
  for handler in logging.getLogger("lm_eval").handlers:
    if isinstance(handler, HeldUntilRunning):
      handler.pass_on()


def _flag(value: Any, name: str) -> Optional[bool]:
  """A boolean model argument (lm-eval parses "True"/"False" already; strings come from direct calls)."""
  if value is None or isinstance(value, bool):
    return value
  if str(value).lower() in ("true", "1", "yes"):
    return True
  if str(value).lower() in ("false", "0", "no"):
    return False
  raise UserError(f"{name}={value!r} is not True or False")


def _positive(value: Any, name: str, default: Optional[int], minimum: int = 1) -> Optional[int]:
  """An integer model argument of at least `minimum` (1: a positive integer); None, "" or "auto..." is `default`."""
  if value is None or value == "" or (isinstance(value, str) and value.startswith("auto")):
    return default
  try:
    number = int(value)
  except (TypeError, ValueError):
    number = minimum - 1
  if number < minimum or isinstance(value, bool):
    raise UserError(f"{name}={value!r} must be {'a positive' if minimum == 1 else 'a non-negative'} integer")
  return number


@register_model("flan_jax")
class FlanJaxLM(TemplateLM):
  """An lm-eval model backed by flan_jax's Transformer (see the module docstring for the arguments)."""

  backend = "causal"

  def __init__(self, checkpoint: Optional[str] = None, batch_size: Any = None, max_length: Any = None,
               max_gen_toks: Any = None, add_bos_token: Any = None, dtype: Optional[str] = None,
               prefix_token_id: Any = None, seed: Any = None, mesh=None, rules=None, **unused: Any):
    super().__init__()
    unused = {k: v for k, v in unused.items() if k not in ("device", "max_batch_size") and v is not None}
    if unused:
      raise UserError(f"model_args {', '.join(sorted(unused))} are not flan_jax's; it takes checkpoint, batch_size, "
                      "max_length, max_gen_toks, add_bos_token, dtype, prefix_token_id and seed")
    self.loaded = loading.open_checkpoint(checkpoint, dtype=dtype, add_bos_token=_flag(add_bos_token, "add_bos_token"),
                                          mesh=mesh, rules=rules)
    self.tokenizer = model_utils.configure_pad_token(self.loaded.tokenizer)
    self.add_bos_token = self.loaded.add_bos_token
    self._max_length = _positive(max_length, "max_length", self.loaded.config.max_position_embeddings)
    self._max_gen_toks = _positive(max_gen_toks, "max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    self._batch_size = _positive(batch_size, "batch_size", DEFAULT_BATCH_SIZE)
    self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
    self.seed = _positive(seed, "seed", DEFAULT_SEED, minimum=0)
    self._token_texts: Optional[list[str]] = None  # each token's text alone, decoded once (_tokens_holding)
    self.scorer = scoring.Scorer(Transformer(self.loaded.config), self.loaded.params, self.loaded.mesh,
                                 self.loaded.rules, self._batch_size)

  # --- What lm-eval reads off a model. ----------------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def prefix_token_id(self) -> int:
    if self.custom_prefix_token_id is not None:
      return self.custom_prefix_token_id
    if self.tokenizer.bos_token_id is not None:
      return self.tokenizer.bos_token_id
    return self.tokenizer.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def device(self) -> str:
    return str(jax.devices()[0].platform)

  @property
  def tokenizer_name(self) -> str:
    return str(self.tokenizer.name_or_path).replace("/", "__")

  def get_model_info(self) -> dict:
    return {"flan_jax_checkpoint": self.loaded.path, "flan_jax_kind": self.loaded.kind,
            "flan_jax_step": self.loaded.step, "flan_jax_mesh": dict(self.loaded.mesh.shape),
            "model_num_parameters": self.loaded.config.num_params(),
            "model_dtype": self.loaded.config.dtype}

  # --- Tokenization: lm-eval's hf backend's rules. ------------------------------------------------

  def _special_tokens(self, string: str, add_special_tokens: Optional[bool], bos_text: Optional[str]) -> dict:
    if add_special_tokens is not None:
      return {"add_special_tokens": add_special_tokens}
    if model_utils.has_bos_prefix(string, bos_text):  # the text already starts with BOS
      return {"add_special_tokens": False}
    return {} if self.add_bos_token is None else {"add_special_tokens": self.add_bos_token}

  def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, left_truncate_len: Optional[int] = None,
                 **kwargs) -> list[int]:
    kwargs = self._special_tokens(string, add_special_tokens, self.tokenizer.decode(self.prefix_token_id))
    ids = self.tokenizer.encode(string, **kwargs)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def _encode_prompt(self, string: str) -> list[int]:
    """A generation prompt, as the hf backend's batch encoding makes it (BOS recognised by its token text)."""
    return self.tokenizer.encode(string, **self._special_tokens(string, None, self.tokenizer.bos_token))

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

  def chat_template(self, chat_template: Any = False) -> Optional[str]:
    """The template --apply_chat_template uses (lm-eval asks before it builds any prompt): refused if none."""
    if chat_template and not self.tokenizer.chat_template:
      self._no_chat_template()
    return super().chat_template(chat_template)

  def _no_chat_template(self):
    raise UserError(f"--apply_chat_template: {self.loaded.path} has no chat template (its tokenizer records none); "
                    "leave the flag out, or evaluate a model that has one")

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    if not self.tokenizer.chat_template:
      self._no_chat_template()
    return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                              continue_final_message=not add_generation_prompt)

  # --- The three kinds of request. ----------------------------------------------------------------

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
    """requests: ((context, continuation) or None, context tokens, continuation tokens) -> (log-likelihood,
    is greedy) each, in order; a context longer than max_length loses its first tokens."""
    pass_on_held_logs()
    too_long = sum(len(c) + len(t) > self.max_length + 1 for _, c, t in requests)
    if too_long:
      log.warning("%d of %d requests exceed max_length=%d and are truncated from the left", too_long,
                  len(requests), self.max_length)
    with tqdm(total=len(requests), disable=self._quiet(disable_tqdm), desc="Running loglikelihood requests") as bar:
      results = self.scorer.score([(c, t) for _, c, t in requests], self.max_length, bar.update)
    for (key, _, _), answer in zip(requests, results):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, answer)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each document's log-likelihood, over lm-eval's disjoint rolling windows of max_length tokens."""
    windows, owners = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
          context_len=1)):
        windows.append((None, context, continuation))
        owners.append(i)
    scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
    totals = [0.0] * len(requests)
    for i, (ll, _) in zip(owners, scores):
      totals[i] += ll
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Continuations cut at the first stop string (`until`, and the EOS token's text): greedy, or sampled where a
    request asks for it (see the module docstring)."""
    eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
    groups: dict = {}
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      kwargs = model_utils.normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
      until = tuple(model_utils.handle_stop_sequences(kwargs.pop("until", None), eos=eos))
      key = (until, int(kwargs.pop("max_gen_toks")), self._sampling(kwargs, gen_kwargs))
      groups.setdefault(key, []).append((i, context, gen_kwargs))
    pass_on_held_logs()
    out: list = [None] * len(requests)
    with tqdm(total=len(requests), disable=self._quiet(disable_tqdm), desc="Running generate_until requests") as bar:
      for (until, max_gen_toks, sampling), group in groups.items():
        prompts = [self._encode_prompt(context) for _, context, _ in group]
        generated = self.scorer.generate(prompts, max_gen_toks, self.max_length, self.loaded.stop_ids, bar.update,
                                         sampling, end_ids=self._tokens_holding(until))
        for (i, context, gen_kwargs), tokens in zip(group, generated):
          text = model_utils.postprocess_generated_text(self.tok_decode(tokens), list(until), None)
          out[i] = text
          self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
    return out

  def _tokens_holding(self, stops: tuple[str, ...]) -> tuple[int, ...]:
    """The tokens whose text holds one of the stop strings: a row that generates one is done (its text is cut at
    the string), so decoding ends there, as lm-eval's `hf` backend ends a row once its text holds a stop string.
    A token's text is its decoding alone; a stop string with a replacement character never matches."""
    if self._token_texts is None:
      self._token_texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))],
                                                      skip_special_tokens=False)
    stops = [s for s in stops if s and "\ufffd" not in s]
    return tuple(i for i, text in enumerate(self._token_texts) if any(s in text for s in stops))

  def _sampling(self, kwargs: dict, asked: dict) -> Optional[scoring.Sampling]:
    """How a request's tokens are picked: None for greedy, else its temperature, top_k and top_p (lm-eval's
    normalised `kwargs`; `asked`: the request's own, for the message)."""
    other = sorted(set(kwargs) - set(GENERATION_ARGS))
    if other:
      raise UserError(f"generation argument(s) {', '.join(other)} of {asked} are not supported by flan_jax's lm-eval "
                      f"backend (it takes until, max_gen_toks, {', '.join(GENERATION_ARGS)}); drop them from the "
                      "task's generation_kwargs or --gen_kwargs")
    temperature = float(kwargs.get("temperature") or 0.0)
    if not kwargs.get("do_sample") or temperature <= 0.0:
      return None  # lm-eval's rule: do_sample=False, or no temperature, is greedy
    top_k, top_p = kwargs.get("top_k") or 0, kwargs.get("top_p")
    top_p = 1.0 if top_p is None else float(top_p)
    if int(top_k) < 0 or not 0.0 < top_p <= 1.0:
      raise UserError(f"{asked}: top_k must be 0 or more and top_p in (0, 1]")
    return scoring.Sampling(temperature, int(top_k), top_p, self.seed)

  @staticmethod
  def _quiet(disable_tqdm: bool) -> bool:
    """No progress bar where lm-eval asks for none, nor on any process of a multi-host job but the first."""
    return disable_tqdm or jax.process_index() != 0
