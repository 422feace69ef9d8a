"""Text instructions for degraded pairs: one sentence per applied degradation, joined "A, B, and C.".

Our own paraphrase pools (written for this project, in the spirit of the paper's ChatGPT-made pools): at
least ten plain sentences per degradation, plus sentences that carry the severity ("slight", "heavy"), used
with probability `prompts.severity_words_prob` when the record's severity is known: the level is
information a restoration model can use. With probability `prompts.ambiguous_prob` the whole prompt is one
vague request ("make this image better") so the model also works without degradation names. Clean samples
get a neutral fusion request.

`make_prompt(records, rng)` is a pure function of the records and the Generator.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ConfigError

# Plain paraphrases, one pool per operator name. Every sentence names its degradation (see KEYWORDS).
POOLS: dict[str, tuple[str, ...]] = {
    "gaussian_noise": (
        "Remove the noise from this image",
        "Clean up the grainy noise in this photo",
        "Denoise the picture",
        "Get rid of the sensor noise",
        "The image is noisy, please clean it",
        "Suppress the random noise in this shot",
        "Reduce the grain in this image",
        "Filter out the noise while keeping the details",
        "Smooth away the speckled noise",
        "Make this noisy picture clean",
        "Take the graininess out of this frame",
        "Fix the noise in this photo",
    ),
    "gaussian_blur": (
        "Sharpen this blurry image",
        "Remove the blur from this picture",
        "Deblur the photo",
        "The image is out of focus, please make it sharp",
        "Bring this soft, blurred picture back into focus",
        "Restore the sharp details lost to blur",
        "Fix the defocus blur in this shot",
        "Make the blurry edges crisp again",
        "Undo the blur and recover fine detail",
        "Refocus this blurred image",
        "Clear up the fuzzy, unfocused look",
    ),
    "motion_blur": (
        "Remove the motion blur from this image",
        "The picture is shaky, please stabilize it",
        "Undo the camera shake blur",
        "Fix the motion smear in this photo",
        "Correct the blur caused by movement",
        "The image is motion blurred, please make it steady and sharp",
        "Get rid of the streaky motion blur",
        "Recover the details smeared by motion",
        "Deblur the movement streaks in this shot",
        "Sharpen the parts blurred by camera motion",
        "Remove the shake from this frame",
    ),
    "downsample": (
        "Increase the resolution of this image",
        "Upscale this low-resolution picture",
        "The photo is pixelated, restore the fine detail",
        "Apply super-resolution to this image",
        "Recover the detail lost to low resolution",
        "Make this low-res shot look high resolution",
        "Enhance the resolution and sharpen the detail",
        "Turn this coarse, low-resolution frame into a detailed one",
        "Restore the high-frequency detail of this downscaled image",
        "This picture was shrunk, bring back its full resolution",
        "Super-resolve the blocky low-resolution details",
    ),
    "jpeg": (
        "Remove the JPEG artifacts from this image",
        "Clean up the compression artifacts",
        "Fix the blocky compression in this photo",
        "Undo the heavy JPEG compression",
        "Get rid of the JPEG blocks and ringing",
        "The image is over-compressed, please restore it",
        "Smooth out the JPEG blocks",
        "Repair the compression damage in this picture",
        "Remove the blockiness left by compression",
        "Reduce the JPEG ringing around the edges",
        "Restore this badly compressed shot",
    ),
    "rain": (
        "Remove the rain from this image",
        "Remove the rain streaks from this picture",
        "Clear the rain out of this photo",
        "Get rid of the falling rain",
        "Derain this scene",
        "Erase the raindrops streaking across the image",
        "Clean up the rain distortions",
        "Take out the rain lines",
        "The photo was taken in the rain, please remove it",
        "Wipe the rain streaks off this shot",
        "Make this rainy scene look dry and clear",
    ),
    "snow": (
        "Remove the snow from this image",
        "Edit out the snow from this scene",
        "Get rid of the falling snowflakes",
        "Clear the snowfall out of this photo",
        "Erase the snowflakes covering the picture",
        "Desnow this image",
        "Take out the snow particles",
        "The picture is full of snow, please clean it",
        "Remove the white snow specks",
        "Clean the snowy flakes off this shot",
        "Make this snowy scene clear",
    ),
    "haze": (
        "Remove the haze from this image",
        "Dehaze this photo",
        "Clear the fog from the picture",
        "Get rid of the haze and restore the contrast",
        "The scene is foggy, please make it clear",
        "Lift the mist covering this shot",
        "Remove the hazy veil",
        "Defog this image",
        "Make the distant, hazy parts clear again",
        "Cut through the fog in this scene",
        "Restore the colours washed out by haze",
        "Clean up the misty atmosphere",
    ),
    "low_light": (
        "Brighten this dark image",
        "The photo is too dark, please brighten it",
        "Balance the lighting in this underexposed picture",
        "Enhance this low-light shot",
        "Lighten the dark areas of the image",
        "Fix the underexposure in this photo",
        "Make this dim picture brighter",
        "Recover the details hidden in the dark",
        "Increase the brightness of this dark night shot",
        "Correct this underexposed, dark image",
        "Raise the exposure of this dim frame",
    ),
    "over_exposure": (
        "Darken this overexposed image",
        "The photo is too bright, please tone it down",
        "Fix the overexposure in this picture",
        "Recover the blown-out highlights",
        "Reduce the excessive brightness",
        "Lower the exposure of this washed-out shot",
        "Correct the overexposed, bleached areas",
        "Tone down the glare and bring back the highlights",
        "Make this too bright picture look natural",
        "Restore the details lost to overexposure",
        "Reduce the brightness of this blown-out frame",
    ),
    "low_contrast": (
        "Increase the contrast of this image",
        "The picture looks flat, please boost its contrast",
        "Enhance the low contrast in this photo",
        "Make this washed-out, low-contrast image pop",
        "Stretch the contrast of this dull shot",
        "Fix the weak contrast",
        "Add contrast to this faded picture",
        "Restore the contrast of this flat image",
        "Improve the contrast so the details stand out",
        "The image lacks contrast, please correct it",
        "Give this dull, low-contrast frame more depth",
    ),
    "high_contrast": (
        "Reduce the contrast of this image",
        "The picture is too contrasty, please soften it",
        "Tone down the harsh contrast",
        "Fix the excessive contrast in this photo",
        "Recover the shadows and highlights crushed by high contrast",
        "Lower the contrast to look natural",
        "Balance the overly strong contrast",
        "Soften the harsh, high-contrast look",
        "Correct the exaggerated contrast in this shot",
        "The contrast is too high, please even it out",
        "Bring back the mid-tones lost to strong contrast",
    ),
    "ir_stripes": (
        "Remove the stripe noise from the infrared image",
        "Clean up the vertical stripes in the thermal image",
        "Get rid of the striping artifacts",
        "Fix the stripe pattern in the IR image",
        "Destripe the infrared picture",
        "Remove the dark stripes from the thermal frame",
        "Correct the column stripes of the infrared sensor",
        "Erase the streaky stripes in the IR channel",
        "The thermal image has stripe noise, please remove it",
        "Smooth out the fixed-pattern stripes",
        "Take out the line stripes in the infrared view",
    ),
}

# Sentences with a severity slot ({level} is an adjective from LEVEL_WORDS).
SEVERITY_POOLS: dict[str, tuple[str, ...]] = {
    "gaussian_noise": ("Remove the {level} noise from this image", "Clean up the {level} grainy noise",
                       "Reduce the {level} sensor noise in this photo"),
    "gaussian_blur": ("Remove the {level} blur from this picture", "Sharpen this image, the blur is {level}",
                      "Fix the {level} defocus blur"),
    "motion_blur": ("Remove the {level} motion blur", "Undo the {level} camera shake blur",
                    "Fix the {level} motion smear in this shot"),
    "downsample": ("Upscale this image, the resolution loss is {level}",
                   "Recover the detail lost to {level} downscaling",
                   "Apply super-resolution, the downsampling is {level}"),
    "jpeg": ("Remove the {level} JPEG artifacts", "Clean up the {level} compression artifacts",
             "Fix the {level} blocky compression"),
    "rain": ("Remove the {level} rain from this image", "Clear the {level} rain streaks",
             "Derain this scene with {level} rain"),
    "snow": ("Remove the {level} snow from this image", "Clear the {level} snowfall",
             "Edit out the {level} snow in this scene"),
    "haze": ("Remove the {level} haze from this image", "Clear the {level} fog in this picture",
             "Dehaze this photo, the haze is {level}"),
    "low_light": ("Fix the {level} underexposure in this photo", "Brighten this image, the darkness is {level}",
                  "Correct the {level} low-light darkness"),
    "over_exposure": ("Fix the {level} overexposure in this photo", "Darken this image, the overexposure is {level}",
                      "Recover the highlights lost to {level} overexposure"),
    "low_contrast": ("Fix the {level} loss of contrast", "Correct the {level} lack of contrast",
                     "Restore the contrast lost to {level} fading"),
    "high_contrast": ("Soften the {level} excess of contrast", "Reduce the contrast, the boost is {level}",
                      "Correct the {level} contrast exaggeration"),
    "ir_stripes": ("Remove the {level} stripe noise from the infrared image", "Clean up the {level} IR stripes",
                   "Destripe the thermal image, the striping is {level}"),
}

LEVEL_WORDS = {
    "mild": ("slight", "light", "mild", "faint"),
    "moderate": ("moderate", "noticeable", "medium"),
    "heavy": ("heavy", "strong", "severe"),
}
# Words by which each pool's sentences name their degradation (checked by the tests, useful to readers).
KEYWORDS = {
    "gaussian_noise": ("nois", "grain"),
    "gaussian_blur": ("blur", "focus"),
    "motion_blur": ("motion", "shak", "shake", "movement"),
    "downsample": ("resolution", "pixelat", "upscal", "downscal", "downsampl", "shrunk"),
    "jpeg": ("jpeg", "compress"),
    "rain": ("rain",),
    "snow": ("snow",),
    "haze": ("haz", "fog", "mist"),
    "low_light": ("dark", "underexpos", "low-light", "dim"),
    "over_exposure": ("overexpos", "exposure", "too bright", "blown", "brightness", "glare"),
    "low_contrast": ("contrast",),
    "high_contrast": ("contrast",),
    "ir_stripes": ("stripe", "striping"),
}

AMBIGUOUS = (
    "Make this image better",
    "Improve the quality of this picture",
    "Fix whatever is wrong with this photo",
    "Enhance this image",
    "Clean up this picture",
    "Restore this photo to a clear state",
    "Make the image look clear and natural",
    "Repair the visual problems in this shot",
    "Give me a clean, high-quality version of this image",
    "Improve how this picture looks",
    "Tidy up the flaws in this image",
    "Make this scene look as it really is",
    "Correct the defects in this photo",
    "Polish this image",
    "Restore the image quality",
)
NEUTRAL = (
    "Fuse the two images",
    "Combine the two source images into one",
    "Merge these images, keeping the details of both",
    "Fuse the sources into a single clear image",
    "Blend the complementary information of both images",
)


def _lower_first(sentence: str) -> str:
    first = sentence.split(" ", 1)[0]
    return sentence if first.isupper() and len(first) > 1 else sentence[:1].lower() + sentence[1:]


def compose(sentences: Sequence[str]) -> str:
    """["A", "B", "C"] -> "A, b, and c." (first capital kept, the rest lower-cased at the start)."""
    parts = [sentences[0]] + [_lower_first(s) for s in sentences[1:]]
    if len(parts) == 1:
        return parts[0] + "."
    if len(parts) == 2:
        return f"{parts[0]}, and {parts[1]}."
    return ", ".join(parts[:-1]) + f", and {parts[-1]}."


def check_prompt_config(cfg: Any) -> tuple[float, float]:
    values = []
    for key in ("ambiguous_prob", "severity_words_prob"):
        v = float(getattr(cfg, key))
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"prompts.{key} = {v} is out of range; valid range: [0, 1]")
        values.append(v)
    return values[0], values[1]


def prompt_parts(records: Sequence[dict], rng: np.random.Generator, ambiguous_prob: float = 0.1,
                 severity_words_prob: float = 0.5) -> list[tuple[str, str]]:
    """The (key, sentence) pairs a prompt is made of; key is an operator name, 'ambiguous' or 'neutral'."""
    names = list(dict.fromkeys(r["name"] for r in records))  # one sentence per degradation, apply order
    if not names:
        return [("neutral", NEUTRAL[int(rng.integers(len(NEUTRAL)))])]
    # Draw the ambiguity first and always draw the sentences, so the stream length does not depend on it.
    ambiguous = rng.random() < ambiguous_prob
    vague = AMBIGUOUS[int(rng.integers(len(AMBIGUOUS)))]
    parts = []
    for name in names:
        if name not in POOLS:
            raise ConfigError(f"no prompt pool for degradation '{name}'; valid: {', '.join(POOLS)}")
        severity = next(r.get("severity") for r in records if r["name"] == name)
        with_level = rng.random() < severity_words_prob and severity in LEVEL_WORDS
        pool = SEVERITY_POOLS[name] if with_level else POOLS[name]
        sentence = pool[int(rng.integers(len(pool)))]
        if with_level:
            words = LEVEL_WORDS[severity]
            sentence = sentence.format(level=words[int(rng.integers(len(words)))])
        parts.append((name, sentence))
    return [("ambiguous", vague)] if ambiguous else parts


def make_prompt(records: Sequence[dict], rng: np.random.Generator, cfg: Optional[Any] = None) -> str:
    """The instruction for a sample with these degradation records (`cfg`: the `prompts` config section)."""
    amb, sev = check_prompt_config(cfg) if cfg is not None else (0.1, 0.5)
    return compose([s for _, s in prompt_parts(records, rng, amb, sev)])
