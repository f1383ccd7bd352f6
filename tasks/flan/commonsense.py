"""Commonsense reasoning (COPA, HellaSwag, PiQA, StoryCloze) and coreference (DPR, Winogrande,
WSC)."""

import tensorflow as tf

from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

# premise, relation ("cause" or "effect"), options -> answer
CAUSE_EFFECT = [
    T("{premise}\n\nWhat was the {relation} of this?\n{options_}"),
    T("Premise: {premise}\nWhich option is the more plausible {relation}?\n{options_}"),
    T("Here is a situation: \"{premise}\" Pick its likelier {relation}.\n{options_}"),
    T("Choose the {relation} that makes the most sense.\n\n{premise}\n{options_}"),
    T("{premise} Think about the {relation}. Which is it?\n{options_}"),
    T("What is the most likely {relation} of the following event? {premise}\n{options_}"),
    T("Event: {premise}\nQuestion: which alternative is its {relation}?\n{options_}"),
    T("Using everyday knowledge, find the {relation}.\n{premise}\n{options_}"),
    T("Write a sentence describing an event whose {relation} is: {answer}", "{premise}"),
]

# context, options -> the ending that fits
ENDING = [
    T("{context}\n\nHow does the text most likely continue?\n{options_}"),
    T("Pick the most natural continuation.\n\n{context}\n{options_}"),
    T("What comes next? {context}\n{options_}"),
    T("Complete the description: {context}\n{options_}"),
    T("Context: {context}\nWhich ending is the most plausible?\n{options_}"),
    T("Finish the story in the most sensible way.\n\n{context}\n{options_}"),
    T("{context}\nChoose the sentence that best follows.\n{options_}"),
    T("Read the beginning and select the right ending.\nBeginning: {context}\n{options_}"),
    T("Here is how it starts: \"{context}\" How does it go on?\n{options_}"),
    T("Write the beginning of a short text that could end like this: {answer}", "{context}"),
]

# goal, options -> the better solution
GOAL_SOLUTION = [
    T("{goal}\n\nWhich is the better way to do this?\n{options_}"),
    T("Goal: {goal}\nPick the solution that works.\n{options_}"),
    T("How would you {goal}?\n{options_}"),
    T("Choose the most sensible method to reach this goal: {goal}\n{options_}"),
    T("Here is a task: {goal}\nWhich approach is right?\n{options_}"),
    T("Using physical common sense, solve: {goal}\n{options_}"),
    T("Which of these would accomplish the goal \"{goal}\"?\n{options_}"),
    T("I want to {goal} What should I do?\n{options_}"),
    T("Q: {goal}\nA sensible solution is:\n{options_}"),
    T("Describe a goal that this method achieves: {answer}", "{goal}"),
]

# sentence, pronoun, options -> the referent of the pronoun
PRONOUN = [
    T("{sentence}\n\nWho or what does \"{pronoun}\" refer to?\n{options_}"),
    T("In the sentence \"{sentence}\", what does the pronoun \"{pronoun}\" stand for?\n{options_}"),
    T("Sentence: {sentence}\nPronoun: {pronoun}\nReferent?\n{options_}"),
    T("Resolve the pronoun \"{pronoun}\" in this sentence.\n{sentence}\n{options_}"),
    T("Read: {sentence}\nHere, \"{pronoun}\" means which one?\n{options_}"),
    T("Which noun is \"{pronoun}\" pointing to? {sentence}\n{options_}"),
    T("{sentence}\nIn the text above, the word \"{pronoun}\" refers to:\n{options_}"),
    T("Find the antecedent of \"{pronoun}\".\n\n{sentence}\n{options_}"),
    T("Here is a sentence: {sentence}\nTo whom or what does \"{pronoun}\" point?\n{options_}"),
    T("Write a sentence where the pronoun \"{pronoun}\" refers to {answer}.", "{sentence}"),
]

# sentence (with a "_" blank), options -> the option that fills the blank
BLANK = [
    T("{sentence}\n\nWhat should fill the blank (_)?\n{options_}"),
    T("Fill in the blank: {sentence}\n{options_}"),
    T("Which option makes the sentence sensible?\n\n{sentence}\n{options_}"),
    T("Sentence: {sentence}\nThe _ stands for:\n{options_}"),
    T("Complete the sentence by replacing _ with the right choice. {sentence}\n{options_}"),
    T("Use common sense to fill the gap.\n{sentence}\n{options_}"),
    T("{sentence}\nWho or what goes in the blank?\n{options_}"),
    T("Pick the word for the empty slot in: \"{sentence}\"\n{options_}"),
    T("Here is a sentence with a gap: {sentence}\nWhich fits?\n{options_}"),
    T("Write a sentence with a blank (_) that should be filled with \"{answer}\".",
      "{sentence}"),
]

# text, pronoun, candidate -> no / yes (does the pronoun refer to the candidate?)
REFERS_TO = [
    T("{text}\n\nIn the passage above, does \"{pronoun}\" refer to \"{candidate}\"?\n{options_}"),
    T("Text: {text}\nIs \"{pronoun}\" the same as \"{candidate}\" here?\n{options_}"),
    T("Read the sentence and decide if the pronoun refers to the noun.\n\n{text}\n"
      "Pronoun: {pronoun}\nNoun: {candidate}\n{options_}"),
    T("Does the word \"{pronoun}\" point to {candidate} in this sentence? {text}\n{options_}"),
    T("{text}\nQuestion: is \"{candidate}\" what \"{pronoun}\" means?\n{options_}"),
    T("Resolve the reference: in \"{text}\", could \"{pronoun}\" be replaced by "
      "\"{candidate}\"?\n{options_}"),
    T("Here is a sentence: {text}\nIf we say \"{pronoun}\" stands for \"{candidate}\", are we "
      "right?\n{options_}"),
    T("Consider: {text}\nDoes {pronoun} mean {candidate}?\n{options_}"),
    T("Coreference check.\nSentence: {text}\nMention 1: {candidate}\nMention 2: {pronoun}\n"
      "Same entity?\n{options_}"),
]


def _two_choice(first, second, label="label", **renames):
  def to_fields(ex):
    out = features.renamed(ex, renames)
    out["options"] = tf.stack([ex[first], ex[second]])
    out["answer"] = features.pick(out["options"], ex[label])
    return out
  return to_fields


def _endings(ex):
  options = tf.reshape(ex["endings"], [-1])
  return {"context": ex["context"], "options": options,
          "answer": features.pick(options, ex["label"])}


def _story_endings(ex):
  """StoryCloze's TFDS label is the CSV's AnswerRightEnding as written: 1 or 2, counted from 1."""
  return _endings({**ex, "label": tf.cast(ex["label"], tf.int32) - 1})


def _candidates(ex):
  options = tf.reshape(ex["candidates"], [-1])
  return {"sentence": ex["sentence"], "pronoun": ex["pronoun"], "options": options,
          "answer": features.pick(options, ex["label"])}


DATASETS = [
    FlanDataset(
        name="copa", cluster=clusters.COMMONSENSE, paper_name="COPA",
        tfds="super_glue/copa:1.0.2", train_size=400,
        to_fields=_two_choice("choice1", "choice2", premise="premise", relation="question"),
        fields=("premise", "relation", "answer", "options"), templates=CAUSE_EFFECT + [
            T("{premise}\nName the {relation}.\n{options_}")]),
    FlanDataset(
        name="hellaswag", cluster=clusters.COMMONSENSE, paper_name="HellaSwag",
        tfds="hellaswag:1.1.0", train_size=39_905, to_fields=_endings,
        fields=("context", "answer", "options"), templates=ENDING),
    FlanDataset(
        name="piqa", cluster=clusters.COMMONSENSE, paper_name="PiQA", tfds="piqa:1.0.0",
        train_size=16_113, to_fields=_two_choice("sol1", "sol2", goal="goal"),
        fields=("goal", "answer", "options"), templates=GOAL_SOLUTION),
    FlanDataset(
        name="story_cloze", cluster=clusters.COMMONSENSE, paper_name="StoryCloze",
        tfds="story_cloze/2016:1.0.0", train_size=1_871, to_fields=_story_endings,
        fields=("context", "answer", "options"), templates=ENDING,
        train_split="validation", test_split="test",
        manual="TFDS needs a manual download (a form on the StoryCloze site), and the 2016 "
               "release has no training split: the validation split is trained on"),
    FlanDataset(
        name="dpr", cluster=clusters.COREFERENCE, paper_name="DPR",
        tfds="definite_pronoun_resolution:1.1.0", train_size=1_322, to_fields=_candidates,
        fields=("sentence", "pronoun", "answer", "options"), templates=PRONOUN, test_split="test"),
    FlanDataset(
        name="winogrande", cluster=clusters.COREFERENCE, paper_name="Winogrande",
        tfds="winogrande:1.2.0", train_size=40_398, train_split="train_xl",
        to_fields=_two_choice("option1", "option2", sentence="sentence"),
        fields=("sentence", "answer", "options"), templates=BLANK),
    FlanDataset(
        name="wsc", cluster=clusters.COREFERENCE, paper_name="WSC (SuperGLUE, for WSC273)",
        tfds="super_glue/wsc.fixed:1.0.2", train_size=554,
        to_fields=features.classification(("no", "yes"), text="text", pronoun="span2_text",
                                          candidate="span1_text"),
        fields=("text", "pronoun", "candidate", "answer", "options"), templates=REFERS_TO + [
            T("Decide: in the sentence below, is {candidate} the one that \"{pronoun}\" talks "
              "about?\n\n{text}\n{options_}")]),
]
