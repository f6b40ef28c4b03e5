"""--render: H.264 that browsers play (PyAV), labels inside the frame and never stacked."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_video

from evad.runtime.render import draw_people, label_rects, render_video, video_codec
from evad.video import open_video


def _inside_and_apart(rects, h: int, w: int) -> None:
    for i, (x1, y1, x2, y2) in enumerate(rects):
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (x1, y1, x2, y2)
        for x1b, y1b, x2b, y2b in rects[i + 1:]:
            assert not (x1 < x2b and x1b < x2 and y1 < y2b and y1b < y2), "labels overlap"


def test_labels_stay_inside_and_do_not_stack() -> None:
    h, w = 180, 320
    # a box at the right edge, one at the top, and three duplicates (a set-prediction detector
    # gives several boxes on one person)
    boxes = [(300, 60, 320, 170), (10, 0, 80, 90)] + [(100, 50, 160, 170)] * 3
    sizes = [(90, 48)] * 5
    rects = label_rects(boxes, sizes, (h, w))
    _inside_and_apart(rects, h, w)
    assert rects[0][2] == w  # moved left to fit, not cut
    assert rects[2][1] == 50 - 48  # above its box when there is room


def test_drawn_labels_on_a_frame() -> None:
    frame = np.zeros((180, 320, 3), np.uint8)
    people = [{"box": [250.0, 20.0, 319.0, 170.0], "person_score": 0.91,
               "actions": [{"name": "carry/hold (an object)", "score": 0.7},
                           {"name": "walk", "score": 0.6}]}] * 2
    rects = draw_people(frame, people)
    _inside_and_apart(rects, 180, 320)
    assert frame[rects[1][1] + 1, rects[1][0] + 1].any()  # the second block is drawn


@pytest.mark.skipif(video_codec() != "h264", reason="needs PyAV with libx264 (pip install av)")
def test_render_is_h264(tmp_path) -> None:
    import av

    video = make_video(tmp_path / "v.mp4", 2.0, 161, 91, 10.0)  # odd sizes: padded for yuv420p
    info = open_video(video)
    recs = [{"time": 0.0, "people": [{"box": [100.0, 10.0, 160.0, 90.0], "person_score": 0.9,
                                       "actions": [{"name": "stand", "score": 0.8}]}]}]
    n = render_video(info, recs, tmp_path / "a.mp4")
    with av.open(str(tmp_path / "a.mp4")) as c:
        s = c.streams.video[0]
        frames = sum(1 for _ in c.decode(s))
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
    assert frames == n == 20
    assert not list(tmp_path.glob("*.partial*"))
