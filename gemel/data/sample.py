"""The embedded sample: a small synthetic multimodal entity-linking dataset in GEMEL's JSON-lines
layout, in which the image, not the text, picks the entity.

Every entity is real and belongs to an ambiguity group of entities that share a surface form
("Mercury": the planet, the element, Freddie Mercury). Each entity has its own drawn image style
(shapes and dominant colours chosen to differ strongly inside a group, so a frozen ImageNet encoder
plus a linear map can tell them apart), randomised per example by pose, colour jitter and noise;
gemel.data.sample_images draws them.
Most dev/test texts are neutral templates filled with the surface form, and a neutral slot uses
the same template for every entity of its group: the identical text then occurs with several gold
entities, so no text-only linker can resolve it.

Determinism: every example draws from its own generator seeded by (seed, stream, keys), so the
output does not depend on generation order; JSON keys are sorted and PNGs carry no metadata.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gemel.data.sample_images import (
    Style,
    apple_logo,
    basketball,
    black_figure_vase,
    blue_river,
    bronze_helmet,
    capitol_dome,
    capsule,
    chocolate_bar,
    coffee_beans,
    coffee_cup_logo,
    desert_cactus,
    eiffel_tower,
    fan_tail_bird,
    fire_bird,
    flag_jordan,
    flag_turkey,
    giant_foot,
    hunter_with_bow,
    liquid_metal,
    muddy_river,
    pine_mountains,
    pink_celebrity,
    planet_cratered,
    powdered_wig_portrait,
    purple_suit,
    python_logo,
    rainforest,
    red_fruit,
    red_planet,
    render_style,
    rosette_fur,
    sand_snake,
    silver_car,
    singer_microphone,
    smile_arrow,
    star_belt,
    volcanic_island,
)

SPLITS = ("train", "dev", "test")
# Share of dev/test slots that get a hinted text; the rest are neutral (text does not decide).
HINTED_EVERY = 3  # one slot in three


# ---------------------------------------------------------------- entities and texts


@dataclass(frozen=True)
class Entity:
    id: str  # a Wikidata QID where we know it confidently, else a stable made-up S-id
    name: str  # its Wikipedia-style title: what the decoder must generate
    surface: str  # the ambiguous surface form every mention uses
    hints: tuple[str, ...]  # descriptive phrases for the hinted templates
    draw: Style  # its drawing function, in gemel.data.sample_images


E = Entity
ENTITIES: tuple[Entity, ...] = (
    E("Q308", "Mercury (planet)", "Mercury", ("the planet closest to the Sun", "the smallest planet"), planet_cratered),
    E("Q925", "Mercury (element)", "Mercury", ("the liquid metal", "the element with symbol Hg"), liquid_metal),
    E("Q15869", "Freddie Mercury", "Mercury", ("the Queen frontman", "the singer of Bohemian Rhapsody"), singer_microphone),
    E("Q810", "Jordan", "Jordan", ("the kingdom whose capital is Amman", "the Middle Eastern country"), flag_jordan),
    E("Q41421", "Michael Jordan", "Jordan", ("the Chicago Bulls legend", "the six-time NBA champion"), basketball),
    E("S001", "Jordan River", "Jordan", ("the river that flows into the Dead Sea", "the river of the Jordan Valley"), blue_river),
    E("Q312", "Apple Inc.", "Apple", ("the iPhone maker", "the company from Cupertino"), apple_logo),
    E("Q89", "Apple", "Apple", ("the crunchy fruit", "the fruit of the orchard"), red_fruit),
    E("Q3884", "Amazon (company)", "Amazon", ("the online retailer", "the company founded by Jeff Bezos"), smile_arrow),
    E("Q3783", "Amazon River", "Amazon", ("the largest river by discharge", "the river of South America"), muddy_river),
    E("S002", "Amazon rainforest", "Amazon", ("the largest tropical forest", "the jungle of the Amazon basin"), rainforest),
    E("Q251", "Java (programming language)", "Java", ("the programming language", "the language of the JVM"), coffee_cup_logo),
    E("S003", "Java coffee", "Java", ("the coffee from Indonesia", "the freshly roasted coffee"), coffee_beans),
    E("S004", "Java", "Java", ("the most populous island", "the island of Indonesia"), volcanic_island),
    E("Q90", "Paris", "Paris", ("the French capital", "the city on the Seine"), eiffel_tower),
    E("Q47899", "Paris Hilton", "Paris", ("the hotel heiress", "the reality TV star"), pink_celebrity),
    E("S005", "Paris (mythology)", "Paris", ("the Trojan prince", "the son of Priam"), black_figure_vase),
    E("S006", "Jaguar", "Jaguar", ("the big cat of the Americas", "the spotted predator"), rosette_fur),
    E("S007", "Jaguar Cars", "Jaguar", ("the British car maker", "the luxury car brand"), silver_car),
    E("Q28865", "Python (programming language)", "Python", ("the programming language", "the language created by Guido van Rossum"), python_logo),
    E("S008", "Python (genus)", "Python", ("the constricting snake", "the snake genus"), sand_snake),
    E("S009", "Monty Python", "Python", ("the British comedy troupe", "the Flying Circus team"), giant_foot),
    E("S010", "Orion (constellation)", "Orion", ("the constellation of the hunter", "the winter constellation"), star_belt),
    E("S011", "Orion (mythology)", "Orion", ("the giant hunter of Greek myth", "the hunter of Greek legend"), hunter_with_bow),
    E("S012", "Orion (spacecraft)", "Orion", ("the NASA crew capsule", "the Artemis spacecraft"), capsule),
    E("Q111", "Mars", "Mars", ("the red planet", "the fourth planet"), red_planet),
    E("S013", "Mars (mythology)", "Mars", ("the Roman god of war", "the Roman deity"), bronze_helmet),
    E("S014", "Mars (chocolate bar)", "Mars", ("the chocolate bar", "the caramel snack"), chocolate_bar),
    E("Q61", "Washington, D.C.", "Washington", ("the US capital", "the city on the Potomac"), capitol_dome),
    E("S015", "Washington (state)", "Washington", ("the Pacific Northwest state", "the Evergreen State"), pine_mountains),
    E("Q23", "George Washington", "Washington", ("the first US president", "the general of the Revolution"), powdered_wig_portrait),
    E("S016", "Phoenix, Arizona", "Phoenix", ("the capital of Arizona", "the desert city"), desert_cactus),
    E("S017", "Phoenix (mythology)", "Phoenix", ("the bird reborn from its ashes", "the mythical firebird"), fire_bird),
    E("S018", "Joaquin Phoenix", "Phoenix", ("the Oscar-winning actor", "the star of Joker"), purple_suit),
    E("Q43", "Turkey", "Turkey", ("the country whose capital is Ankara", "the country spanning two continents"), flag_turkey),
    E("S019", "Turkey (bird)", "Turkey", ("the Thanksgiving bird", "the large game bird"), fan_tail_bird),
)

# KB entries no mention links to; several share a surface form, so the name trie is not trivial.
DISTRACTORS: tuple[tuple[str, str], ...] = (
    ("S101", "Mercury Records"), ("S102", "Mercury Prize"), ("S103", "Jordan Peterson"),
    ("S104", "Michael B. Jordan"), ("S105", "Apple Records"), ("S106", "Amazon Prime Video"),
    ("S107", "Java Sea"), ("S108", "Paris Saint-Germain F.C."), ("S109", "Jaguar Land Rover"),
    ("S110", "Python (mythology)"), ("S111", "Orion Pictures"), ("S112", "Mars Attacks!"),
    ("Q42101", "Denzel Washington"), ("S113", "Phoenix Suns"), ("S114", "Turkey Creek"),
)

NEUTRAL_TEMPLATES: tuple[str, ...] = (
    "Everyone was talking about {m} yesterday.",
    "A new photo of {m} appeared online.",
    "I saw a picture of {m} this morning.",
    "This image shows {m}.",
    "{m} was trending again today.",
    "Here is {m}, as promised.",
    "My friend sent me this shot of {m}.",
    "Nobody expected {m} to look like this.",
    "Another picture of {m} from the archive.",
    "{m} is in the news again.",
    "We finally got a good look at {m}.",
    "They put {m} on the front page.",
)

HINTED_TEMPLATES: tuple[str, ...] = (
    "{m}, {h}, made headlines this week.",
    "Look at {m}: {h}.",
    "A documentary about {m}, {h}, airs tonight.",
    "Students learned about {m}, {h}.",
    "{m} ({h}) in a photo from last year.",
    "A close-up of {m}, {h}.",
    "The museum opened an exhibit on {m}, {h}.",
    "Fans of {m}, {h}, shared this picture.",
)


def groups() -> dict[str, list[int]]:
    """Surface form -> indices of its entities, in ENTITIES order."""
    out: dict[str, list[int]] = {}
    for i, e in enumerate(ENTITIES):
        out.setdefault(e.surface, []).append(i)
    return out


# ---------------------------------------------------------------- generation


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, key): results do not depend on generation order."""
    return np.random.default_rng([seed, *key])


def render(entity: Entity, size: int, rng: np.random.Generator) -> Image.Image:
    """The entity's image for one example, drawn from the example's own generator."""
    return render_style(entity.draw, size, rng)


def text_for(entity: Entity, neutral_template: str | None, rng: np.random.Generator) -> str:
    if neutral_template is not None:
        return neutral_template.format(m=entity.surface)
    template = HINTED_TEMPLATES[int(rng.integers(len(HINTED_TEMPLATES)))]
    return template.format(m=entity.surface, h=entity.hints[int(rng.integers(len(entity.hints)))])


def slot_template(seed: int, group: int, split: int, k: int, n_per_entity: int) -> str | None:
    """Dev/test: slot k of a group is neutral for all its entities (same template) or hinted.
    Slots are counted across groups so that one in HINTED_EVERY is hinted."""
    if (group * n_per_entity + k) % HINTED_EVERY == HINTED_EVERY - 1:
        return None
    return NEUTRAL_TEMPLATES[int(rng_for(seed, 1, group, split, k).integers(len(NEUTRAL_TEMPLATES)))]


def records_for_split(seed: int, split_i: int, per_entity: int) -> list[tuple[int, str, np.random.Generator]]:
    """(entity index, text, the example's generator) for every mention of one split."""
    out = []
    for g, members in enumerate(groups().values()):
        for e in members:
            for k in range(per_entity):
                rng = rng_for(seed, 0, e, split_i, k)
                if split_i == 0:  # train: half neutral, any template, so the mapper must use the image
                    neutral = NEUTRAL_TEMPLATES[int(rng.integers(len(NEUTRAL_TEMPLATES)))] if rng.random() < 0.5 else None
                else:
                    neutral = slot_template(seed, g, split_i, k, per_entity)
                out.append((e, text_for(ENTITIES[e], neutral, rng), rng))
    order = rng_for(seed, 2, split_i).permutation(len(out))
    return [out[i] for i in order]


def json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n"


def write_split(folder: Path, split: str, split_i: int, per_entity: int, seed: int, image_size: int) -> int:
    lines = []
    for n, (e, text, rng) in enumerate(records_for_split(seed, split_i, per_entity)):
        entity = ENTITIES[e]
        rid = f"{split}-{n:04d}"
        render(entity, image_size, rng).save(folder / "images" / f"{rid}.png", format="PNG")
        lines.append(json_line({"id": rid, "text": text, "mention": entity.surface, "img_name": f"{rid}.png",
                                "target": entity.name, "golden": entity.id}))
    (folder / f"{split}.json").write_text("".join(lines), encoding="utf-8")
    return len(lines)


def kb_entries() -> dict[str, str]:
    kb = {e.id: e.name for e in ENTITIES}
    kb.update(DISTRACTORS)
    if len(kb) != len(ENTITIES) + len(DISTRACTORS) or len(set(kb.values())) != len(kb):
        raise AssertionError("sample KB: entity ids and names must be unique")
    return dict(sorted(kb.items()))


def generate_sample(out: str | Path, seed: int, train_per_entity: int, dev_per_entity: int,
                    test_per_entity: int, image_size: int) -> dict[str, Any]:
    """Write train/dev/test.json (GEMEL JSON lines), kb.json and images/*.png under `out`.

    Everything is built in a temporary folder beside `out` and swapped in at the end, so an
    interrupted run leaves the previous sample intact and a smaller run leaves no stale images.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "kb.json").exists():
        raise FileExistsError(f"{out}: exists and is not a generated sample (no kb.json); refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700: the sample is as readable as any folder made here
    try:
        (tmp / "images").mkdir()
        counts = {split: write_split(tmp, split, i, n, seed, image_size)
                  for i, (split, n) in enumerate(zip(SPLITS, (train_per_entity, dev_per_entity, test_per_entity)))}
        (tmp / "kb.json").write_text(json.dumps(kb_entries(), indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "entities": len(ENTITIES),
        "ambiguity_groups": len(groups()),
        "kb_entities": len(ENTITIES) + len(DISTRACTORS),
        "mentions": counts,
        "images": sum(counts.values()),
        "seed": seed,
    }


def swap_in(new: Path, out: Path) -> None:
    """Replace `out` by `new` with renames only, deleting the old copy last."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old)
