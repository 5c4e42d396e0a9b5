"""Hand-written annotations for the demo images, read by ``build_examples.py``.

For every image id: ``artifacts`` as (category, [x0, y0, x1, y1], referring expression) in pixels
of the saved 320 px image (empty for real photographs; for an edited image the first box is the
edited region), a gold ``rationale``, and five candidate detector ``responses`` as
(answer, reasoning), one per intended quality level:

5  correct label, precise and grounded: the right artifact at the right place (for a real photo,
   the right evidence of authenticity);
4  correct label with a minor lapse: a slightly imprecise location or one missing detail;
3  correct label but generic or partial, with a noticeable omission;
2  the wrong label, hedged and unsure, mixing valid and invalid details;
1  hallucinated artifacts that are not in the image and a confidently wrong label.

The answer of each level is the project's rubric, ``deepfakejudge.bootstrap.prompts.verdict``: the
true class at levels 3..5, the wrong one at 2 and 1 (an edited image's true class is fake);
``tests/test_examples.py`` checks every row against it.
"""

ANNOTATIONS = {
    # ------------------------------------------------------------------ real photographs
    "astronaut": {
        "artifacts": [],
        "rationale": (
            "This is a genuine studio portrait of an astronaut in an orange launch suit: one soft "
            "frontal studio light illuminates her face, the dark neck ring and the white helmet at "
            "lower right consistently, and the helmet visor carries a single rectangular reflection of "
            "that light. Fine details such as the stitched mission patch on the chest at left, the name "
            "tag and the folds of the flag at the left edge are coherent and free of warping, so "
            "nothing indicates generation or editing."
        ),
        "responses": {
            5: ("real",
                "The lighting is consistent across the whole portrait: the face, the metal neck ring "
                "and the white helmet at lower right are all lit by the same soft frontal light, and "
                "the black visor shows one rectangular reflection of it. The embroidered mission "
                "patch on the chest at left and the small name tag to its right have crisp, readable "
                "stitching, and the stars and stripes of the flag at the left edge fold naturally. The "
                "shuttle model in the upper right stands sharply on its dark base in front of the "
                "mottled backdrop. I see no warping, blending seams or texture repetition, so this "
                "is a real photograph."),
            4: ("real",
                "The woman's face, hair and the orange suit are lit evenly and naturally, and the "
                "reflection on the black helmet in the lower right matches the studio lighting. The "
                "round patch on her chest and the flag on the left look like real fabric with normal "
                "folds. The backdrop shows an ordinary mottled studio texture. Everything is "
                "consistent with a genuine portrait photograph."),
            3: ("real",
                "The image looks like a normal official portrait. The person, the clothing and the "
                "background appear natural and the lighting seems fine overall. I don't see anything "
                "that clearly points to manipulation, so I think it is real."),
            2: ("fake",
                "The face looks natural, but the orange suit is very smooth and the backdrop has an "
                "odd cloudy pattern that could be generated. The model rocket in the corner seems a "
                "little blurry compared with the person. It might be a real photo, but some parts feel "
                "artificial, so I lean toward fake."),
            1: ("fake",
                "This image is clearly AI-generated. The text on the round chest patch is garbled "
                "nonsense, the astronaut's left hand resting on the helmet has six fingers, and the "
                "flag on the left has the wrong number of stripes that melt into the background. The "
                "helmet's reflection shows a different room than the studio. These are typical "
                "diffusion-model errors, so the image is definitely fake."),
        },
    },
    "camera": {
        "artifacts": [],
        "rationale": (
            "This black-and-white photograph of a man in a dark overcoat looking through a camera on a "
            "tripod is authentic: the three thin tripod legs have continuous metallic highlights down "
            "to their feet in the grass, and the grass texture becomes finer toward the horizon as "
            "perspective requires. The distant buildings on the right, including the domed building and "
            "the tall tower, are softened by the same haze and sit on one consistent horizon line, and "
            "the even daylight on the man's face matches the bright, open sky."
        ),
        "responses": {
            5: ("real",
                "The perspective of the grass field is consistent: its grain is coarse in the "
                "foreground and becomes finer toward the horizon behind the tripod. All three tripod "
                "legs run unbroken from the hinge below the camera to their feet in the grass, with "
                "thin continuous highlights along the metal. The skyline on the right, with the domed "
                "building and the tall tower, is uniformly softened by distance and aligns with one "
                "horizon. The bright, even daylight on the man's face matches the open sky. No seams, "
                "repeated textures or deformed shapes are present, so this is a real photograph."),
            4: ("real",
                "The man, his coat and the camera have natural detail, and the tripod with its three "
                "legs stands properly on the grass. The buildings in the background are slightly hazy "
                "as expected for distant objects. The grass field shows a natural, irregular texture. "
                "This looks like a genuine photo."),
            3: ("real",
                "It is an old-looking grayscale photo of a person with a camera in a park. The "
                "textures and lighting seem natural and nothing looks out of place, so it appears to be "
                "real."),
            2: ("fake",
                "The scene looks mostly normal, but the man's coat is an almost solid black shape "
                "with no folds and the sky is completely flat, which often happens in generated "
                "images. The tripod legs also look very thin against the grass. I am not sure, but it "
                "may well be fake."),
            1: ("fake",
                "The photo is fake. The tripod legs pass through the man's coat, the camera has no "
                "lens, and the buildings in the background are duplicated mirror copies of each "
                "other. The man's shadow on the grass points toward the sun. These are clear signs of "
                "generation, so this image is definitely not real."),
        },
    },
    "chelsea": {
        "artifacts": [],
        "rationale": (
            "This close-up of a tabby cat is a real photograph: the shallow depth of field keeps the "
            "eyes, nose and whisker pads sharp while the ears and the background at the right fall off "
            "smoothly into blur. Both green eyes carry matching catchlights, the fur stripes on the "
            "forehead follow the shape of the head, and the individual whiskers are continuous fine "
            "lines, all consistent with a camera capture."
        ),
        "responses": {
            5: ("real",
                "The focus falls off exactly as a real lens would: the eyes, the pink nose and the "
                "whisker pads are sharp, while the ears at the top corners and the light background "
                "on the right are smoothly blurred. Both green eyes show matching catchlights from the "
                "same light source. The dark stripes on the forehead follow the curve of the head, and "
                "each white whisker is a continuous thin line without breaks or merging. Nothing is "
                "distorted, so this is a real photo."),
            4: ("real",
                "The fur texture on the forehead and cheeks is detailed and natural, and the whiskers "
                "are fine and continuous. The eyes have realistic reflections. The blurred background "
                "behind the cat is consistent with a close-up shot. I believe this image is real."),
            3: ("real",
                "The cat looks natural and the photo has normal colours and focus. I could not find "
                "any obvious problems, so it is probably real."),
            2: ("fake",
                "The eyes are very large and glossy and the fur looks almost painted in places, which "
                "AI images often do, although the whiskers look realistic. The background is blurred "
                "in a way that could hide mistakes. I think it may be generated."),
            1: ("fake",
                "This cat is AI-generated. Its pupils are different shapes, the left eye is much "
                "larger than the right, the whiskers grow out of the forehead, and there is a third "
                "ear hidden in the blurred background. The fur has a repeating tiled pattern. It is "
                "definitely fake."),
        },
    },
    "coffee": {
        "artifacts": [],
        "rationale": (
            "This overhead photograph of an espresso cup on a red saucer on a wooden table is real. "
            "The warm light produces consistent highlights on the white cup rim, on the saucer's glaze "
            "and on the bowl of the silver teaspoon at lower right, which also reflects its "
            "surroundings. The crema has natural fine bubbles, and the worn wood grain continues "
            "uninterrupted around the saucer into the dark shadow at upper left."
        ),
        "responses": {
            5: ("real",
                "The reflections agree with each other: the bright rim of the white cup, the glossy "
                "red saucer and the bowl of the teaspoon at lower right all catch the same warm light, "
                "and the spoon's curved bowl mirrors the surrounding scene. The crema in the cup has "
                "fine, irregular bubbles and a lighter ring at the edge. The scratched wood grain of "
                "the table runs continuously past the saucer into the shadow in the upper-left corner. "
                "There are no seams or warped shapes, so this photo is real."),
            4: ("real",
                "The cup, saucer and spoon have natural reflections and the wood table shows realistic "
                "scratches and grain. The crema texture looks like real coffee. The lighting is warm "
                "and consistent. This is an authentic photograph."),
            3: ("real",
                "It is a normal picture of a cup of coffee on a table. The colours and lighting look "
                "natural and I don't see anything suspicious, so it is real."),
            2: ("fake",
                "The colours are very saturated and the saucer looks unusually smooth, which might "
                "mean it was generated, though the spoon and the wood look realistic. The coffee "
                "surface could be a bit too perfect. I'd guess fake but it is hard to tell."),
            1: ("fake",
                "This image is fake. The cup has two handles, the spoon is melting into the saucer, "
                "and the table's wood grain repeats in identical tiles. The coffee's surface shows a "
                "reflection of a window that does not exist. Clearly AI-generated."),
        },
    },
    "hubble": {
        "artifacts": [],
        "rationale": (
            "This deep-field telescope image is authentic: thousands of faint galaxies of varied "
            "shapes, sizes and colours are scattered irregularly over a uniformly noisy black "
            "background, and none of them repeats. The few foreground stars, such as the one right of "
            "centre below the bright orange elliptical galaxy, show the same fixed diffraction-spike "
            "pattern of the telescope, and the larger galaxies have soft halos consistent with the "
            "optics."
        ),
        "responses": {
            5: ("real",
                "Every galaxy in the field is different: the bright orange elliptical right of centre, "
                "the pale spiral on the left and the red galaxy near the top have distinct shapes and "
                "colours, and the faint specks are scattered irregularly with no repeated groups. The "
                "star below the orange elliptical shows thin diffraction spikes in the same orientation "
                "as the other stars, as the telescope optics require. The black background has even "
                "sensor noise everywhere. There are no seams or duplicated regions, so this is a real "
                "astronomical image."),
            4: ("real",
                "The distribution of galaxies is random and varied in colour, and the bright ones have "
                "natural soft glows. The background noise looks uniform across the frame. The star "
                "near the centre-right has diffraction spikes. It is a genuine telescope image."),
            3: ("real",
                "This is a picture of space with many galaxies. It looks like a normal telescope photo "
                "and I see nothing that suggests editing, so it is real."),
            2: ("fake",
                "Some galaxies look very similar to each other and the colours are quite vivid, which "
                "could be a sign of generation. On the other hand the noise looks realistic. I am "
                "unsure, but it might be artificial."),
            1: ("fake",
                "The image is fake: the same spiral galaxy is pasted several times across the frame, "
                "there is a visible square seam through the middle, and the stars have spikes "
                "pointing in random directions. The black background is perfectly clean, which no "
                "camera can produce. It is definitely synthetic."),
        },
    },
    "rocket": {
        "artifacts": [],
        "rationale": (
            "This dusk photograph of a rocket on its launch pad is real: the pad floodlights along the "
            "bottom produce star-shaped flares with the same number of rays, the deep-blue sky shades "
            "smoothly toward the horizon, and the low clouds near the horizon are lit consistently. "
            "The four lattice towers and the lightning rods converge with a single perspective, and "
            "the empty, starless sky is exactly what a short twilight exposure records."
        ),
        "responses": {
            5: ("real",
                "The bright pad lights along the bottom all produce starburst flares with the same "
                "number and pattern of rays, as a lens aperture does. The blue sky grades smoothly "
                "from dark at the top to lighter near the horizon clouds, and no stars are visible, as "
                "expected for a twilight exposure with bright floodlights. The rocket in the centre and "
                "the four lattice towers share one consistent perspective, and their thin metal beams "
                "stay sharp without merging. This is a real photograph."),
            4: ("real",
                "The launch towers and the rocket have consistent perspective and lighting. The lights "
                "at the bottom show natural lens flares. The sky gradient is smooth. The image appears "
                "to be a real photograph of a night launch preparation."),
            3: ("real",
                "A rocket on a launch pad in the evening. The scene looks realistic and the lighting "
                "is fine, so I believe this picture is real."),
            2: ("fake",
                "The towers look realistic, but the lights at the bottom have very strong, identical "
                "star shapes that might be added effects, and the sky is suspiciously clean with no "
                "stars at all. I can't be certain, but parts of it could be generated, so I lean "
                "toward fake."),
            1: ("fake",
                "This is a generated image. The rocket has no engines and floats above the pad, the "
                "towers on the left and right are mirror copies, and the sky contains a strange "
                "glowing ring behind the rocket. The text on the rocket is unreadable gibberish. It is "
                "fake."),
        },
    },
    # ------------------------------------------------------------------ edited photographs
    "astronaut_text": {
        "artifacts": [
            ("text and symbols", [202, 234, 292, 316],
             "the white block letters 'STS 63' on the black helmet visor at lower right"),
            ("perspective/geometry", [206, 238, 291, 273],
             "the top line 'STS', perfectly straight across the curved visor"),
            ("reflections", [214, 258, 236, 292],
             "the visor's rectangular highlight, partly covered by the letters"),
        ],
        "rationale": (
            "The white block letters 'STS' and '63' on the black helmet visor at lower right were "
            "added after capture. They are perfectly straight and equally wide although the visor is "
            "a curved dome, they are uniformly bright with blocky, stair-stepped edges unlike the soft "
            "studio focus, and they sit on top of the visor's rectangular highlight instead of being "
            "part of the glossy surface."
        ),
        "responses": {
            5: ("fake",
                "The image has been edited. The large white letters 'STS' and '63' on the black "
                "helmet visor in the lower right do not belong to the surface: they run perfectly "
                "straight and keep the same width while the visor curves away, and they are flat "
                "white with no gloss, even where they cross the visor's rectangular highlight. Their "
                "edges are blocky and pixel-sharp, unlike the soft focus of the rest of the portrait. "
                "The rest of the photo (face, suit, patch, flag) is consistent, so the text is a "
                "digital overlay."),
            4: ("fake",
                "There is text on the helmet at the bottom right that looks pasted on: the letters "
                "are flat and do not bend with the round shape of the helmet, and they are much "
                "sharper than the rest of the image. The portrait itself looks authentic, so the "
                "image was edited by adding this text."),
            3: ("fake",
                "Something about the helmet looks off, and there seems to be added text in the image. "
                "The rest of the photo looks natural. I think it has been manipulated."),
            2: ("real",
                "The lighting on the face seems a bit too even and the flag on the left looks soft, "
                "but that is common in studio portraits. There is something written on the helmet, "
                "which could just be a printed marking. I'm not certain, but it is probably real."),
            1: ("real",
                "This is a genuine official NASA portrait. The helmet shows the normal mission "
                "markings that are printed on every visor, and the reflections in the glass match the "
                "studio. The face, suit and flag are all consistent. There is no sign of editing; the "
                "image is definitely real."),
        },
    },
    "camera_clone": {
        "artifacts": [
            ("physical plausibility", [188, 204, 264, 320],
             "the tripod's missing right leg: only two legs reach the grass"),
            ("structural fusion/deformation", [190, 202, 204, 216],
             "the short stub of a leg just below the tripod hinge"),
            ("texture", [200, 220, 262, 320],
             "the strip of grass where the right leg should be, cloned from the grass to its right"),
        ],
        "rationale": (
            "The tripod in the lower centre has been edited: its right leg, which should run from the "
            "hinge under the camera down to the grass at the lower right, is gone, leaving a tripod "
            "standing on only two legs. A short bright stub remains just below the hinge, and the "
            "grass along the missing leg's path is a clone-stamped copy of the grass further right, "
            "so its grain repeats."
        ),
        "responses": {
            5: ("fake",
                "The tripod has been retouched. Below the hinge under the camera only two legs reach "
                "the ground, the left leg and the near-vertical one; the right leg, which should run "
                "down to the grass at lower right, has been removed, and a short bright stub of it is "
                "still attached just below the hinge. A tripod cannot stand like that. The grass along "
                "the path of the missing leg repeats the grain of the patch to its right, a "
                "clone-stamp trace. The rest of the scene is consistent, so the image was edited."),
            4: ("fake",
                "The tripod looks wrong: one of its legs is missing, so it stands on only two legs, "
                "which is not physically stable. The grass in the area on the right side of the "
                "tripod looks a little too uniform, as if it was painted over. This looks like an "
                "object-removal edit."),
            3: ("fake",
                "The tripod area seems strange and the grass near it looks slightly inconsistent. "
                "The man and the buildings look natural. It has probably been edited."),
            2: ("real",
                "The man's coat is very dark and the sky is quite flat, but that is common in old "
                "black-and-white photos. The tripod might look a bit thin. I don't see clear signs of "
                "editing, so it is likely real."),
            1: ("real",
                "This is the classic unedited cameraman photograph. The tripod's three legs stand "
                "firmly on the grass, the camera is in focus, and the shadows fall consistently. The "
                "buildings are sharp and correctly placed. Definitely a real image."),
        },
    },
    "chelsea_relight": {
        "artifacts": [
            ("colour/tone", [192, 100, 272, 196],
             "the cold blue-grey patch on the cat's cheek below its right-hand eye"),
            ("lighting and shadows", [248, 112, 270, 184],
             "the blurred background at the right edge of the patch, tinted blue only inside the oval"),
        ],
        "rationale": (
            "The colour on the right side of the cat's face has been altered: an oval patch on the "
            "cheek below the eye on the right and beside the nose has a cold blue-grey cast that no "
            "light source in the warm scene explains. The fur there loses its tan and orange tones "
            "while the rest of the face stays warm, and the blurred background at the patch's right "
            "edge turns blue only inside the same soft oval."
        ),
        "responses": {
            5: ("fake",
                "The lighting is inconsistent on the right side of the face. An oval area on the "
                "cheek below the eye on the right, next to the nose, has a cold blue-grey tint, while "
                "the rest of the fur is warm tan and orange under the same warm light. The patch has "
                "soft oval borders and even continues into the blurred background at its right edge, "
                "which turns blue only inside the oval. No light in the scene could produce such a "
                "local cast, so the colour was edited."),
            4: ("fake",
                "The cat's right cheek has a bluish, washed-out colour that does not match the warm "
                "brown fur elsewhere on the face. The discoloured area looks like a local colour "
                "adjustment rather than real lighting. The image has been edited."),
            3: ("fake",
                "The colours on one side of the cat's face look a little inconsistent with the rest "
                "of the image. Apart from that it looks natural. It has likely been modified."),
            2: ("real",
                "The eyes look glossy and the fur near the ears is blurry, as in many close-ups. There "
                "is some bluish colouring on one side of the face, but it might just be light from a "
                "window. I am not fully sure, but it is probably real."),
            1: ("real",
                "This is a real photograph of a cat. The fur colour is uniform across the face, the "
                "eyes have natural reflections and the blur in the background is normal for a "
                "close-up. Nothing has been changed; the image is authentic."),
        },
    },
    "coffee_smear": {
        "artifacts": [
            ("noise/blur/resolution", [160, 110, 226, 180],
             "the dark, featureless smear on the saucer right of the cup, where the teaspoon's bowl was"),
            ("structural fusion/deformation", [196, 110, 214, 126],
             "the end of the teaspoon handle beside the cup, cut off at the top of the smear"),
        ],
        "rationale": (
            "An object has been removed from the saucer: the silver teaspoon's handle still runs "
            "down the right side of the cup, but where its bowl should rest, right of the cup at lower "
            "centre, there is only a smooth, dark reddish smear. The smear has none of the saucer's "
            "glaze highlights or specks and no spoon reflections, its blurry texture differs from the "
            "sharp surroundings, and the handle stops abruptly at its upper edge, the signature of "
            "inpainting."
        ),
        "responses": {
            5: ("fake",
                "Part of the image was inpainted. The thin silver handle of a teaspoon runs down the "
                "right side of the cup, but it ends abruptly just above the saucer, and where the "
                "spoon's bowl should lie, right of the cup at lower centre, there is a smooth, dark "
                "reddish smear. That area has no glaze highlights, no specks and no metallic "
                "reflection, and it is much blurrier than the crisp saucer around it. The cup, crema "
                "and wood grain are otherwise consistent, so the spoon was removed by editing."),
            4: ("fake",
                "There is a blurry dark patch on the saucer to the right of the cup that looks like "
                "something was erased. Its texture is too smooth compared with the glossy saucer, and "
                "the metal object leaning against the cup seems to be cut off there. This is an "
                "object-removal edit."),
            3: ("fake",
                "The saucer has an area that looks smudged and unnatural. The rest of the picture "
                "looks fine. It has probably been edited."),
            2: ("real",
                "The crema looks a bit too smooth and the cup handle seems oddly shaped. There is a "
                "darker region on the saucer, but it is probably the cup's shadow. I am not sure, but "
                "it is possibly an unedited photo."),
            1: ("real",
                "The image is an unedited photo. The spoon lies naturally on the saucer with correct "
                "reflections, the cup casts a normal shadow and the wood grain is continuous. "
                "Nothing was removed or added. It is real."),
        },
    },
    "hubble_duplicate": {
        "artifacts": [
            ("background coherence", [22, 196, 92, 266],
             "the bright orange elliptical galaxy and spiked star at lower left, copied from right of centre"),
            ("background coherence", [200, 124, 270, 194],
             "the original galaxy-and-star pair right of centre that reappears at lower left"),
        ],
        "rationale": (
            "Part of the star field has been duplicated: the bright orange elliptical galaxy right of "
            "centre and the diffraction-spiked star just below it reappear as an identical pair at "
            "the lower left. The copy matches the original in size, colour, halo and the relative "
            "position of the star and of the faint specks around them, which cannot happen in a real "
            "deep field where every galaxy is unique."
        ),
        "responses": {
            5: ("fake",
                "A region has been copied and pasted. The bright orange elliptical galaxy right of "
                "centre, with the spiked star just below and to its right, appears a second time in "
                "the lower-left part of the image with exactly the same size, colour and halo, and the "
                "star sits in the same relative position with the same spikes. Even the faint specks "
                "around the two pairs repeat. In a real deep field every galaxy is unique, so this "
                "duplication shows the image was edited."),
            4: ("fake",
                "Two of the bright orange galaxies look identical: one in the right half of the image "
                "and one near the bottom left, each with a spiked star close by. Such an exact "
                "repetition does not occur naturally, so part of the image has been cloned."),
            3: ("fake",
                "Some galaxies in the image look suspiciously similar, as if part of the picture was "
                "copied. Otherwise it looks like a normal space photo. It is probably edited."),
            2: ("real",
                "There are many galaxies and a few bright ones look alike, but that is normal in "
                "space images. The colours might have been enhanced. It is most likely a real "
                "telescope picture."),
            1: ("real",
                "This is an authentic Hubble deep-field image. Every galaxy has a unique shape and "
                "there are no repeated objects anywhere. The noise is uniform and the stars have "
                "correct diffraction spikes. It is definitely real."),
        },
    },
    "rocket_splice": {
        "artifacts": [
            ("splice/edit boundary", [112, 6, 268, 54],
             "the rectangular cluster of coloured, galaxy-like specks in the upper-centre sky"),
            ("physical plausibility", [136, 6, 206, 34],
             "the fuzzy red and white blobs above the rocket, shaped like distant galaxies"),
        ],
        "rationale": (
            "A piece of another image has been spliced into the sky: a wide rectangle in the upper "
            "centre, above the rocket and the tops of the two middle towers, is filled with fuzzy red, "
            "orange, blue and white galaxy-like blobs. Nothing like them appears anywhere else in the starless "
            "twilight sky, they stop along straight horizontal and vertical edges, and a dusk exposure "
            "of a floodlit pad could not record such faint, colourful extended objects."
        ),
        "responses": {
            5: ("fake",
                "The sky has been spliced. In the upper centre, above the rocket and the tops of the "
                "two middle towers, there is a wide rectangular patch full of fuzzy red, orange, blue and white "
                "blobs shaped like distant galaxies. The rest of the twilight sky is completely "
                "starless, as it should be in a short exposure with bright pad lights, and the blobs "
                "stop along straight edges. They clearly come from another image, so this photograph "
                "was edited."),
            4: ("fake",
                "There are colourful star-like dots in the upper sky that do not fit the scene: the "
                "rest of the sky has no stars, and the dots are confined to one area near the top. "
                "They seem pasted from another image, so the photo was edited."),
            3: ("fake",
                "The sky looks odd, with some spots that don't match the rest of the scene. The "
                "rocket and towers look natural. The image has likely been modified."),
            2: ("real",
                "The lights at the bottom have exaggerated star shapes and the sky has a few colourful "
                "spots, though these could be stars, fireworks or lens flare. The towers look "
                "consistent. Hard to say, but it might be a real photo."),
            1: ("real",
                "A real photo of a night launch. The stars visible in the sky are normal for a clear "
                "night, the floodlights produce natural flares and the towers are consistent. "
                "Nothing has been added. It is authentic."),
        },
    },
    # ------------------------------------------------------------------ synthetic images
    "synth_landscape": {
        "artifacts": [
            ("noise/blur/resolution", [0, 0, 200, 90],
             "the regular checkerboard grid over the smooth sky, clearest in the upper left"),
            ("reflections", [96, 156, 126, 240],
             "the bright glitter path on the lake at left of centre, far from the sun"),
            ("reflections", [212, 180, 262, 240],
             "the lake below the sun, where the sun's reflection is missing"),
            ("edges/boundaries", [200, 90, 320, 156],
             "the stair-stepped, blocky mountain ridgelines on the right"),
        ],
        "rationale": (
            "This sunset lake scene is synthetic. A fine, regular checkerboard grid covers every "
            "smooth area, most visibly the sky at upper left, which is the trace of a decoder's "
            "strided upsampling, and the mountain ridgelines are blocky stair-steps. The lake's bright "
            "glitter path lies left of centre, far from the sun at upper right, while the water "
            "directly below the sun shows no reflection of it."
        ),
        "responses": {
            5: ("fake",
                "The image is generated. Zooming into the smooth sky, especially at the upper left, "
                "reveals a regular checkerboard grid across every flat area, the signature of strided "
                "transposed-convolution upsampling. The reflection is physically wrong: the sun sits "
                "at the upper right, but the bright glitter path on the lake lies left of centre, and "
                "the water directly under the sun shows no reflection of it. The mountain ridgelines "
                "on the right are blocky stair-steps rather than natural rock edges."),
            4: ("fake",
                "The sun's reflection on the lake is in the wrong place: the bright streak on the "
                "water is far to the left of the sun. The sky has a fine grid-like texture that "
                "suggests an upsampling artifact from a generator. This is a synthetic image."),
            3: ("fake",
                "The image looks too smooth and stylised, like a rendering, and the reflection on "
                "the water seems off. It is probably AI-generated."),
            2: ("real",
                "It looks like a sunset photo taken with a phone, with some compression noise in the "
                "sky. The reflection on the lake seems a little bright and the mountains are simple, "
                "but it is probably real."),
            1: ("real",
                "A real landscape photograph at sunset. The sun is reflected exactly below itself in "
                "the calm lake, the mountains have natural rocky texture and the sky gradient is "
                "clean with no artifacts. Definitely an authentic camera image."),
        },
    },
    "synth_spheres": {
        "artifacts": [
            ("lighting and shadows", [186, 176, 270, 208],
             "the shadow of the green sphere on the right, cast to the lower left toward the light"),
            ("edges/boundaries", [34, 114, 106, 186],
             "the jagged, stair-stepped outline of the red sphere on the left"),
        ],
        "rationale": (
            "This still life of three spheres is a synthetic render with inconsistent lighting: all "
            "three highlights sit at the upper left, so the key light is at the upper left, and the "
            "red and blue spheres cast their shadows to the lower right, yet the green sphere on the "
            "right throws its shadow to the lower left, toward the light. The sphere outlines, "
            "clearest on the red sphere at left, are jagged stair-steps with single-pixel spurs, "
            "typical of a render without anti-aliasing."
        ),
        "responses": {
            5: ("fake",
                "The lighting is impossible. The specular highlights on all three spheres sit at "
                "their upper left, so the light comes from the upper left, and the red and blue "
                "spheres correctly cast shadows to the lower right. The green sphere on the right, "
                "however, throws its shadow to the lower left, toward the light, where it overlaps "
                "the blue sphere's shadow. The outlines of the spheres, clearest on the red one at "
                "left, are jagged stair-steps with single-pixel spurs, as in a render without "
                "anti-aliasing. This is a synthetic image."),
            4: ("fake",
                "The shadows are inconsistent: two spheres cast shadows to the right, but the green "
                "sphere's shadow points the other way even though its highlight shows the same light "
                "direction. The scene looks computer-rendered. It is fake."),
            3: ("fake",
                "The spheres look like a 3D render and the shadows do not quite match. The image is "
                "probably synthetic."),
            2: ("real",
                "The wall is very plain and the floor colour is uniform, but the reflections on the "
                "balls look realistic and the shadows are maybe fine. The edges look a little rough, "
                "perhaps from compression. I'm not sure, but it could be a studio photo."),
            1: ("real",
                "This is a real studio photograph of three glossy balls on a table. The shadows all "
                "point away from the lamp, the edges are smooth and the reflections match the room. "
                "Nothing suggests rendering or editing; it is real."),
        },
    },
}
