"""Translation: ParaCrawl (EN/DE, EN/ES, EN/FR), WMT-14 EN/FR and WMT-16 EN/CS, EN/DE, EN/FI,
EN/RO, EN/RU, EN/TR. The answer is the English side; three templates turn the direction round."""

from flan_tasks import metrics
from flan_tasks.flan import clusters
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

LANGUAGES = {"cs": "Czech", "de": "German", "es": "Spanish", "fi": "Finnish", "fr": "French",
             "ro": "Romanian", "ru": "Russian", "tr": "Turkish"}


def translation_templates(language: str) -> list[T]:
  """foreign (text in `language`) -> answer (English); the last three go English -> foreign."""
  return [
      T(f"Translate from {language} to English:\n\n{{foreign}}"),
      T(f"{{foreign}}\n\nWhat does this {language} text say in English?"),
      T("Translate this sentence into English.\n{foreign}"),
      T(f"{language}: {{foreign}}\nEnglish:"),
      T("How would you say the following in English? \"{foreign}\""),
      T(f"Render this {language} passage in English: {{foreign}}"),
      T("Give an English translation of the text below.\n\n{foreign}"),
      T(f"Translate to {language}:\n\n{{answer}}", "{foreign}"),
      T(f"English: {{answer}}\n{language}:", "{foreign}"),
      T(f"{{answer}}\n\nHow is this said in {language}?", "{foreign}"),
  ]


def _to_english(code):
  return lambda ex: {"foreign": ex[code], "answer": ex["en"]}


def _pair(name, paper_name, tfds, code, train_size, test_split="validation", manual=""):
  return FlanDataset(
      name=name, cluster=clusters.TRANSLATION, paper_name=paper_name, tfds=tfds,
      train_size=train_size, to_fields=_to_english(code), fields=("foreign", "answer"),
      templates=translation_templates(LANGUAGES[code]), metric_fns=metrics.TRANSLATION,
      test_split=test_split, manual=manual)


_CZENG = ("the WMT-16 cs-en training data includes CzEng 1.6, which TFDS can only read from a "
          "manual download")

DATASETS = [
    _pair("para_crawl_ende", "ParaCrawl EN/DE", "para_crawl/ende:1.2.0", "de", 36_351_593,
          test_split=None),
    _pair("para_crawl_enes", "ParaCrawl EN/ES", "para_crawl/enes:1.2.0", "es", 21_987_267,
          test_split=None),
    _pair("para_crawl_enfr", "ParaCrawl EN/FR", "para_crawl/enfr:1.2.0", "fr", 31_374_161,
          test_split=None),
    _pair("wmt14_enfr", "WMT-14 EN/FR", "wmt14_translate/fr-en:1.0.0", "fr", 40_836_715),
    _pair("wmt16_encs", "WMT-16 EN/CS", "wmt16_translate/cs-en:1.0.0", "cs", 997_240,
          manual=_CZENG),
    _pair("wmt16_ende", "WMT-16 EN/DE", "wmt16_translate/de-en:1.0.0", "de", 4_548_885),
    _pair("wmt16_enfi", "WMT-16 EN/FI", "wmt16_translate/fi-en:1.0.0", "fi", 2_073_394),
    _pair("wmt16_enro", "WMT-16 EN/RO", "wmt16_translate/ro-en:1.0.0", "ro", 610_320),
    _pair("wmt16_enru", "WMT-16 EN/RU", "wmt16_translate/ru-en:1.0.0", "ru", 1_516_162),
    _pair("wmt16_entr", "WMT-16 EN/TR", "wmt16_translate/tr-en:1.0.0", "tr", 205_756),
]
