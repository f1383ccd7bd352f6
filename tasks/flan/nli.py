"""Natural language inference: ANLI (R1-R3), CB, MNLI, QNLI, RTE, SNLI, WNLI."""

from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

THREE_WAY = ("yes", "it is not possible to tell", "no")
TWO_WAY = ("yes", "no")

# premise, hypothesis -> yes / it is not possible to tell / no
ENTAILMENT = [
    T("{premise}\n\nGiven the passage above, is it true that \"{hypothesis}\"?\n{options_}"),
    T("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise support the hypothesis?\n"
      "{options_}"),
    T("Read the text and decide whether the claim follows from it.\n\nText: {premise}\n"
      "Claim: {hypothesis}\n{options_}"),
    T("Suppose that {premise} Can we infer that \"{hypothesis}\"?\n{options_}"),
    T("Decide whether the second statement has to be true when the first one is.\n"
      "First: {premise}\nSecond: {hypothesis}\n{options_}"),
    T("{premise}\nQuestion: does it follow that {hypothesis}\n{options_}"),
    T("Here is a statement: {premise}\n\nHere is another one: {hypothesis}\n\n"
      "If the first is correct, is the second correct as well?\n{options_}"),
    T("Is the hypothesis \"{hypothesis}\" entailed by the premise \"{premise}\"?\n{options_}"),
    T("Take this passage as true: \"{premise}\"\nThen judge the sentence \"{hypothesis}\".\n"
      "{options_}"),
    T("Premise: {premise}\nWrite a sentence for which the question \"does the premise imply "
      "it?\" has the answer \"{answer}\".", "{hypothesis}"),
]

# question, sentence -> yes / no
QUESTION_ENTAILMENT = [
    T("Does the sentence \"{sentence}\" answer the question \"{question}\"?\n{options_}"),
    T("Question: {question}\nSentence: {sentence}\nCan the question be answered from the "
      "sentence?\n{options_}"),
    T("{sentence}\n\nDoes the text above contain the answer to \"{question}\"?\n{options_}"),
    T("I want to know: {question}\nWould this sentence tell me? \"{sentence}\"\n{options_}"),
    T("Someone asked \"{question}\" and got the reply \"{sentence}\". Is that a real answer?\n"
      "{options_}"),
    T("Check whether the passage answers the query.\nQuery: {question}\nPassage: {sentence}\n"
      "{options_}"),
    T("{question}\nIs the following a good answer to the question above?\n{sentence}\n{options_}"),
    T("Decide if the information in \"{sentence}\" is enough to answer \"{question}\".\n"
      "{options_}"),
    T("Sentence: {sentence}\nQuestion: {question}\nAnswerable from the sentence?\n{options_}"),
    T("{sentence}\n\nWrite a question; asked whether the text above answers it, one would say "
      "\"{answer}\".", "{question}"),
]


def _entailment(name, paper_name, tfds, train_size, option_by_label, test_split="validation",
                premise="premise", hypothesis="hypothesis", templates=ENTAILMENT):
  return FlanDataset(
      name=name, cluster=clusters.NLI, paper_name=paper_name, tfds=tfds, train_size=train_size,
      to_fields=features.classification(option_by_label, premise=premise, hypothesis=hypothesis),
      fields=("premise", "hypothesis", "answer", "options"), templates=templates,
      test_split=test_split)


_ANLI = ("yes", "it is not possible to tell", "no")  # e, n, c
_MNLI = ("yes", "it is not possible to tell", "no")  # entailment, neutral, contradiction
_CB = ("yes", "no", "it is not possible to tell")    # entailment, contradiction, neutral

DATASETS = [
    _entailment("anli_r1", "ANLI R1", "anli/r1:0.1.0", 16_946, _ANLI, premise="context"),
    _entailment("anli_r2", "ANLI R2", "anli/r2:0.1.0", 45_460, _ANLI, premise="context"),
    _entailment("anli_r3", "ANLI R3", "anli/r3:0.1.0", 100_459, _ANLI, premise="context"),
    _entailment("cb", "CB", "super_glue/cb:1.0.2", 250, _CB),
    _entailment("mnli", "MNLI", "glue/mnli:2.0.0", 392_702, _MNLI,
                test_split="validation_matched"),
    _entailment("snli", "SNLI", "snli:1.1.0", 550_152, _MNLI),
    _entailment("rte", "RTE", "super_glue/rte:1.0.2", 2_490, ("yes", "no")),
    _entailment("wnli", "WNLI", "glue/wnli:2.0.0", 635, ("no", "yes"),
                premise="sentence1", hypothesis="sentence2"),
    FlanDataset(
        name="qnli", cluster=clusters.NLI, paper_name="QNLI", tfds="glue/qnli:2.0.0",
        train_size=104_743,
        to_fields=features.classification(("yes", "no"), question="question", sentence="sentence"),
        fields=("question", "sentence", "answer", "options"), templates=QUESTION_ENTAILMENT),
]
