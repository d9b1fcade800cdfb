"""Offline default text benchmark: seeded, templated multi-domain topic classification.

Why synthetic: no hub is reachable here, yet the text path (MiniLM backbone,
LoRA experts, proxies) needs domains that a router must tell apart. Each
domain has its own four topics, its own keywords, fillers and writing style
(clinical notes, legal prose, market headlines, sports chat), and all share
the label space 0..3, whose MEANING depends on the domain ("label 0" is
cardiology in `medical` and contract law in `legal`). So a classifier
trained on one domain is near chance on another, while inside a domain a
bag of words reaches roughly 85-90% (a quarter of the samples carry one
keyword from a different topic of the same domain, which keeps it from 100%).

Samples are short (about 10-20 words; MiniLM runs with max_length 48).
pretrain_x/y stay None: the text backbone comes pretrained.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from fedmoe_sim.data.base import Benchmark, Domain, check_domain_names

TRAIN_PER_DOMAIN = 400
TEST_PER_DOMAIN = 200
PUBLIC_PER_SOURCE = 200   # public samples per domain and per out-of-domain source
CONFUSION_RATE = 0.25     # share of samples whose second keyword comes from another topic
NUM_CLASSES = 4


@dataclass(frozen=True)
class TextDomainSpec:
    """One domain's generator: keywords per topic (label 0..3), neutral fillers, templates."""

    topics: tuple[str, ...]              # topic name per label, for reports only
    keywords: tuple[tuple[str, ...], ...]  # [4][k] topic keywords
    fillers: tuple[str, ...]             # domain words that carry no label information
    templates: tuple[str, ...]           # slots: {a}, {b} keywords, {f} filler


SPECS: dict[str, TextDomainSpec] = {
    "medical": TextDomainSpec(
        ("cardiology", "respiratory", "dermatology", "neurology"),
        (("arrhythmia", "palpitations", "angina", "tachycardia", "murmur", "stent", "echocardiogram",
          "hypertension", "bradycardia", "infarction", "pacemaker", "troponin"),
         ("asthma", "wheezing", "bronchitis", "pneumonia", "spirometry", "inhaler", "dyspnea",
          "emphysema", "sputum", "bronchodilator", "nebulizer", "pleurisy"),
         ("eczema", "psoriasis", "rash", "lesion", "dermatitis", "melanoma", "acne", "biopsy",
          "pruritus", "hives", "blister", "topical"),
         ("migraine", "seizure", "neuropathy", "tremor", "vertigo", "epilepsy", "concussion",
          "paresthesia", "aphasia", "dementia", "electroencephalogram", "numbness")),
        ("patient", "clinic", "symptoms", "dosage", "prescription", "referral", "chart", "physician",
         "nurse", "ward", "vitals", "diagnosis", "outpatient", "triage", "labs"),
        ("Patient presents with {a} and mild {b}; {f} noted at intake.",
         "Clinical note: {a} persists, {f} reviewed, consider {b}.",
         "Referred for {a} after {b}; {f} scheduled tomorrow.",
         "Assessment: {a}. History of {b}. Plan: {f} and monitoring.",
         "{f} update - worsening {a} with occasional {b}."),
    ),
    "legal": TextDomainSpec(
        ("contract", "criminal", "property", "family"),
        (("breach", "clause", "indemnity", "warranty", "termination", "arbitration", "counterparty",
          "addendum", "covenant", "consideration", "rescission", "liquidated"),
         ("felony", "indictment", "prosecutor", "acquittal", "arraignment", "parole", "misdemeanor",
          "plea", "burglary", "sentencing", "bail", "homicide"),
         ("easement", "deed", "zoning", "lien", "tenancy", "eviction", "landlord", "encroachment",
          "title", "boundary", "leasehold", "conveyance"),
         ("custody", "divorce", "alimony", "adoption", "guardianship", "visitation", "prenuptial",
          "paternity", "annulment", "separation", "stepparent", "matrimonial")),
        ("plaintiff", "defendant", "counsel", "court", "tribunal", "statute", "hearing", "motion",
         "filing", "judge", "appellate", "docket", "affidavit", "jurisdiction", "respondent"),
        ("The {f} filed a motion concerning {a} and {b} pursuant to the statute.",
         "Counsel argued that the {a} was governed by {b} under {f} precedent.",
         "Hereinafter, the matter of {a} shall be heard together with {b} before the {f}.",
         "Pursuant to section twelve, the {f} considered {a} and the alleged {b}.",
         "Ruling: {a} upheld; {b} remanded to the {f}."),
    ),
    "finance": TextDomainSpec(
        ("stocks", "banking", "crypto", "insurance"),
        (("equities", "dividend", "shares", "nasdaq", "buyback", "valuation", "earnings", "ipo",
          "bullish", "portfolio", "index", "volatility"),
         ("deposit", "overdraft", "savings", "loan", "teller", "checking", "branch", "credit",
          "withdrawal", "mortgage", "refinancing", "atm"),
         ("bitcoin", "blockchain", "token", "wallet", "ethereum", "mining", "stablecoin", "ledger",
          "altcoin", "defi", "nft", "halving"),
         ("premium", "deductible", "policyholder", "underwriting", "claim", "annuity", "actuary",
          "coverage", "reinsurance", "payout", "beneficiary", "rider")),
        ("analysts", "investors", "quarter", "markets", "traders", "percent", "fiscal", "outlook",
         "forecast", "revenue", "capital", "profit", "budget", "dollars", "economy"),
        ("Markets: {a} rallied as {f} weighed {b} this quarter.",
         "{f} expect {a} to rise three percent amid {b} concerns.",
         "Breaking: {a} and {b} drive {f} sentiment lower.",
         "Q3 report shows {a} up, {b} flat, {f} cautious.",
         "Why {f} are rethinking {a} after the {b} slump"),
    ),
    "sports": TextDomainSpec(
        ("football", "tennis", "basketball", "swimming"),
        (("touchdown", "quarterback", "fumble", "linebacker", "endzone", "punt", "interception",
          "tackle", "gridiron", "kickoff", "huddle", "receiver"),
         ("backhand", "volley", "deuce", "racket", "ace", "tiebreak", "forehand", "wimbledon", "lob",
          "smash", "grandslam", "topspin"),
         ("dunk", "rebound", "layup", "dribble", "threepointer", "buzzer", "hoop", "alleyoop",
          "freethrow", "nba", "crossover", "jumpshot"),
         ("freestyle", "butterfly", "breaststroke", "backstroke", "lap", "relay", "medley", "pool",
          "lane", "diving", "goggles", "flipturn")),
        ("fans", "crowd", "coach", "season", "stadium", "championship", "rookie", "playoffs",
         "highlight", "teammates", "league", "rivalry", "victory", "comeback", "tournament"),
        ("What a game!! that {a} and the {b} had the {f} going wild",
         "omg the {a} in the last minute, {f} still talking about the {b}",
         "Can't believe the {b}... best {a} of the {f} lol",
         "Live: huge {a}, then a {b}, and the {f} erupts!",
         "honestly that {a} > any {b} this {f}"),
    ),
}

# Out-of-domain sources: public pool only (public_source = -1), each with its own 4 topics.
OOD_SPECS: dict[str, TextDomainSpec] = {
    "cooking": TextDomainSpec(
        ("baking", "grilling", "salads", "soups"),
        (("flour", "oven", "dough", "yeast", "muffin", "croissant", "sourdough", "frosting"),
         ("barbecue", "charcoal", "skewer", "brisket", "marinade", "smoker", "kebab", "ribs"),
         ("lettuce", "vinaigrette", "arugula", "cucumber", "crouton", "spinach", "dressing", "radish"),
         ("broth", "chowder", "ladle", "simmer", "bisque", "stew", "minestrone", "noodles")),
        ("recipe", "kitchen", "chef", "dinner", "ingredients", "tablespoon", "pinch", "leftovers",
         "pantry", "spices"),
        ("Tried a new recipe with {a} and {b}, the {f} loved it",
         "tip: add {a} before the {b}, keeps the {f} happy",
         "My {f} secret: more {a}, less {b}."),
    ),
    "travel": TextDomainSpec(
        ("beaches", "mountains", "cities", "flights"),
        (("shoreline", "snorkel", "surfboard", "lagoon", "sunscreen", "seashell", "reef", "tide"),
         ("summit", "trailhead", "hiking", "glacier", "altitude", "backpack", "cabin", "alpine"),
         ("museum", "subway", "skyline", "cathedral", "boulevard", "cafe", "plaza", "nightlife"),
         ("airport", "boarding", "layover", "luggage", "passport", "runway", "jetlag", "terminal")),
        ("itinerary", "vacation", "tourists", "hotel", "booking", "guidebook", "souvenir", "journey",
         "weekend", "postcard"),
        ("Day three of our {f}: {a}, more {b}, zero regrets",
         "Any advice on {a} near the {b}? planning a {f}",
         "Photo dump from the {f} - {a} and {b}"),
    ),
}
DEFAULT_DOMAINS = tuple(SPECS)

# Function words the templates share across domains; everything else is domain-specific.
STOPWORDS = frozenset(
    "a an and the of to with at for by in on as that was be this any after before about from "
    "more less up then are is it its our my what why can t".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased alphabetic words minus STOPWORDS: what the vocabulary-overlap check compares."""
    return set(re.findall(r"[a-z]+", text.lower())) - STOPWORDS


def _rng(seed: int, *tags: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(tags).encode())])


def generate(spec: TextDomainSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n balanced samples: object array of str [n] and int64 labels [n]."""
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    texts = np.empty(n, dtype=object)
    for i, label in enumerate(labels):
        a, b = rng.choice(spec.keywords[label], size=2, replace=False)
        if rng.random() < CONFUSION_RATE:  # one keyword from another topic of the same domain
            other = (label + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES
            b = rng.choice(spec.keywords[other])
        template = spec.templates[rng.integers(len(spec.templates))]
        texts[i] = template.format(a=a, b=b, f=rng.choice(spec.fillers))
    return texts, labels


def load_text_domains(domains: tuple[str, ...] = (), seed: int = 0) -> Benchmark:
    """Build the text benchmark; equal (domains, seed) give identical samples.

    Each domain: TRAIN_PER_DOMAIN train and TEST_PER_DOMAIN test samples. Public
    pool: PUBLIC_PER_SOURCE fresh samples from every chosen domain (public_source
    = its index) and from each OOD source (cooking, travel; public_source = -1),
    with their own labels. Streams are keyed by (seed, domain, split), so adding a
    domain does not change the others' samples.
    """
    names = check_domain_names("text", tuple(domains) or DEFAULT_DOMAINS, SPECS, SPECS)
    built = []
    for name in names:
        x_tr, y_tr = generate(SPECS[name], TRAIN_PER_DOMAIN, _rng(seed, name, "train"))
        x_te, y_te = generate(SPECS[name], TEST_PER_DOMAIN, _rng(seed, name, "test"))
        built.append(Domain(name, x_tr, y_tr, x_te, y_te))
    px, py, ps = [], [], []
    sources = [(name, SPECS[name], i) for i, name in enumerate(names)]
    sources += [(name, spec, -1) for name, spec in OOD_SPECS.items()]
    for name, spec, source in sources:
        x, y = generate(spec, PUBLIC_PER_SOURCE, _rng(seed, name, "public"))
        px.append(x)
        py.append(y)
        ps.append(np.full(len(y), source, dtype=np.int64))
    return Benchmark(
        name="text-domains", kind="text", num_classes=NUM_CLASSES, domains=tuple(built),
        public_x=np.concatenate(px), public_y=np.concatenate(py), public_source=np.concatenate(ps),
        class_names=tuple(f"topic-{k}" for k in range(NUM_CLASSES)),
    )
