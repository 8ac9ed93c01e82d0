"""Manifests load into validated datasets; every bad manifest names its file and line."""

import hashlib
import json
import os

import pytest

from pilot.data.manifest import DEFAULT_PROMPT_TEMPLATE, Dataset, ManifestError, load_manifest


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def write_jsonl(path, rows):
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def raises(path, *fragments, **kwargs):
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- happy paths ------------------------------------------------------------------------------------


def test_csv_happy_path(tmp_path):
    root = tmp_path / "widgets"
    manifest = write(
        root / "manifest.csv",
        "image,label,question\n"
        "imgs/a.png, scratch ,\n"
        "imgs/b.png,hole,Is there a hole?\n"
        "./imgs/sub/../c.png,no defect,\n",
    )
    ds = load_manifest(manifest)
    assert isinstance(ds, Dataset)
    assert ds.name == "widgets"
    assert len(ds) == 3
    assert ds.manifest == manifest.absolute()
    assert ds.sha256 != hashlib.sha256(manifest.read_bytes()).hexdigest()  # the images' sizes and times too
    assert load_manifest(manifest).sha256 == ds.sha256
    assert ds.labels == ("hole", "no defect", "scratch")
    a, b, c = ds.items
    assert [a.id, b.id, c.id] == ["imgs/a.png", "imgs/b.png", "imgs/c.png"]
    assert [a.line, b.line, c.line] == [2, 3, 4]
    assert a.label == "scratch"
    assert a.image == (root / "imgs" / "a.png").resolve() and a.image.is_absolute()
    assert c.image == (root / "imgs" / "c.png").resolve()
    assert a.question == DEFAULT_PROMPT_TEMPLATE.format(labels="hole, no defect, scratch")
    assert b.question == "Is there a hole?"


def test_csv_bom_explicit_ids_and_multiline_question(tmp_path):
    manifest = write(
        tmp_path / "d" / "m.csv",
        "\ufeffID,Image,Label,Question\n"
        'x1,a.png,yes,"two\nlines"\n'
        "x2,b.png,no,\n",
    )
    ds = load_manifest(manifest, prompt_template="Yes or no?")
    assert [item.id for item in ds.items] == ["x1", "x2"]
    assert ds.items[0].question == "two\nlines"
    assert ds.items[1].line == 4  # the quoted field spans lines 2-3
    assert ds.items[1].question == "Yes or no?"


def test_jsonl_happy_path_with_declared_labels(tmp_path):
    root = tmp_path / "set"
    manifest = write_jsonl(
        root / "data.jsonl",
        [
            {"image": "1.jpg", "label": "yes"},
            {"image": "2.jpg", "label": "no", "question": "Any crack?", "id": "b"},
            {"image": "3.jpg", "label": 2},
        ],
    )
    ds = load_manifest(manifest, labels=["yes", "no", "2"], prompt_template="Pick {labels}", name="custom")
    assert ds.name == "custom"
    assert ds.labels == ("yes", "no", "2")  # declared order kept
    assert [item.id for item in ds.items] == ["1.jpg", "b", "3.jpg"]
    assert [item.label for item in ds.items] == ["yes", "no", "2"]
    assert ds.items[0].question == "Pick yes, no, 2"
    assert ds.items[1].question == "Any crack?"


def test_json_and_ndjson_lines_accepted_and_blank_lines_skipped(tmp_path):
    for suffix in (".json", ".ndjson"):
        text = '{"image": "a.png", "label": "x"}\n\n{"image": "b.png", "label": "y"}\n'
        manifest = write(tmp_path / f"m{suffix}", text)
        ds = load_manifest(manifest)
        assert [item.line for item in ds.items] == [1, 3]


def test_missing_image_file_is_accepted(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\nnot/there.png,x\n")
    ds = load_manifest(manifest)
    assert not ds.items[0].image.exists()


def test_absolute_path_inside_folder_is_fine(tmp_path):
    inside = tmp_path / "imgs" / "a.png"
    manifest = write(tmp_path / "m.csv", f"image,label\n{inside},x\n")
    ds = load_manifest(manifest)
    assert ds.items[0].image == inside.resolve()
    assert ds.items[0].id == "imgs/a.png"


def test_template_without_placeholder(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,x\n")
    assert load_manifest(manifest, prompt_template="Describe.").items[0].question == "Describe."


# -- bad manifests ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    raises(tmp_path / "nope.csv", "not found")


def test_unknown_extension(tmp_path):
    raises(write(tmp_path / "m.txt", "image,label\na.png,x\n"), ".txt")


@pytest.mark.parametrize("text", ["", "  \n\n"])
def test_empty_file(tmp_path, text):
    raises(write(tmp_path / "m.csv", text), "empty")


def test_header_only(tmp_path):
    raises(write(tmp_path / "m.csv", "image,label\n"), "no rows")


def test_missing_column_lists_columns_found(tmp_path):
    message = raises(write(tmp_path / "m.csv", "img,label,question\na.png,x,q\n"), ":1:", "'image'")
    assert "'img', 'label', 'question'" in message


def test_manifest_without_labels(tmp_path):
    """No label column: every item unlabelled, the answer set is the declared one (or empty: free text)."""
    manifest = write(tmp_path / "m.csv", "image,question\na.png,Any scratch?\nb.png,Any hole?\n")
    ds = load_manifest(manifest)
    assert ds.labels == () and ds.labelled == 0
    assert [(i.label, i.labelled) for i in ds.items] == [("", False), ("", False)]
    declared = load_manifest(manifest, labels=["yes", "no"])
    assert declared.labels == ("yes", "no") and declared.labelled == 0
    # JSON lines too, with a null label
    ds = load_manifest(write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "label": None, "question": "q"}]))
    assert ds.items[0].label == "" and ds.labels == ()


def test_manifest_without_labels_needs_answers_for_the_default_question(tmp_path):
    manifest = write(tmp_path / "m.csv", "image\na.png\n")
    raises(manifest, "no labels", "--labels")
    assert load_manifest(manifest, labels=["yes", "no"]).items[0].question.endswith("yes, no.")
    assert load_manifest(manifest, prompt_template="Describe the part.").items[0].question == "Describe the part."


def test_labels_on_some_rows_and_no_labels_flag(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,scratch\nb.png,\nc.png,hole\n")
    ds = load_manifest(manifest)
    assert ds.labels == ("hole", "scratch") and ds.labelled == 2
    assert [i.label for i in ds.items] == ["scratch", "", "hole"]
    ignored = load_manifest(manifest, no_labels=True)
    assert ignored.labels == ("hole", "scratch") and ignored.labelled == 0  # the column still names the answers


def test_missing_key_in_jsonl(tmp_path):
    raises(write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "label": "x"}, {"img": "b.png", "label": "x"}]),
           ":2:", "'image'", "'img'")


@pytest.mark.parametrize(("row", "column"), [(",x", "image")])
def test_empty_required_value(tmp_path, row, column):
    raises(write(tmp_path / "m.csv", f"image,label\nok.png,y\n{row}\n"), ":3:", f"'{column}'")


def test_duplicate_ids_name_both_lines(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,x\nb.png,y\n./a.png,y\n")
    raises(manifest, ":4:", "line 2", "'a.png'")


def test_duplicate_explicit_ids(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "label": "x", "id": "k"},
                                                  {"image": "b.png", "label": "x", "id": "k"}])
    raises(manifest, ":2:", "line 1", "'k'")


def test_path_escape_with_dotdot(tmp_path):
    raises(write(tmp_path / "d" / "m.csv", "image,label\na.png,x\nimgs/../../secret.png,x\n"), ":3:", "outside")


def test_absolute_path_outside(tmp_path):
    outside = tmp_path / "elsewhere" / "a.png"
    raises(write(tmp_path / "d" / "m.csv", f"image,label\n{outside},x\n"), ":2:", "outside")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_pointing_outside(tmp_path):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.png").write_bytes(b"x")
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(outside / "secret.png", root / "file.png")
    os.symlink(outside / "dir", root / "linkdir")
    raises(write(root / "m.csv", "image,label\nfile.png,x\n"), ":2:", "outside")
    raises(write(root / "m.csv", "image,label\nok.png,x\nlinkdir/a.png,x\n"), ":3:", "outside")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_inside_is_fine(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    ds = load_manifest(write(tmp_path / "m.csv", "image,label\nalias/a.png,x\n"))
    assert ds.items[0].image == (tmp_path / "real" / "a.png").resolve()
    assert ds.items[0].id == "alias/a.png"


def test_unknown_label_with_declared_labels(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,yes\nb.png,Maybe\n")
    message = raises(manifest, ":3:", "'Maybe'", labels=["yes", "no"])
    assert "['yes', 'no']" in message


def test_labels_are_case_sensitive(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,Yes\n")
    raises(manifest, ":2:", "'Yes'", labels=["yes"])
    assert load_manifest(manifest).labels == ("Yes",)


@pytest.mark.parametrize("line", ['{"image": "b.png", "label": ', '["b.png", "x"]', '"b.png"'])
def test_bad_json_line(tmp_path, line):
    manifest = write(tmp_path / "m.jsonl", '{"image": "a.png", "label": "x"}\n' + line + "\n")
    raises(manifest, ":2:")


def test_json_document_is_refused(tmp_path):
    manifest = write(tmp_path / "m.json", json.dumps([{"image": "a.png", "label": "x"}], indent=2))
    raises(manifest, ":1:", "JSON lines")


def test_non_utf8_bytes(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,x\nb.png,caf\xe9\n", encoding="latin-1")
    raises(manifest, ":3:", "UTF-8")


def test_too_many_values_in_csv_row(tmp_path):
    raises(write(tmp_path / "m.csv", "image,label\na.png,x,extra\n"), ":2:", "commas")


def test_semicolon_separated_csv_gets_a_hint(tmp_path):
    raises(write(tmp_path / "m.csv", "image;label\na.png;x\n"), ":1:", "separator")


def test_bad_declared_labels_and_template(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,x\n")
    raises(manifest, "twice", labels=["x", "x"])
    raises(manifest, "template", prompt_template="Pick {choices}")
    with pytest.raises(TypeError):
        load_manifest(manifest, labels="x")


# -- tasks and references ---------------------------------------------------------------------------


def test_csv_task_column_with_text_and_json_references(tmp_path):
    manifest = write(
        tmp_path / "m.csv",
        "image,task,label,question,answer,answers\n"
        "a.png,,scratch,,,\n"
        'b.png,text,,What colour?,,"[""red"", "" dark red ""]"\n'
        "c.png,TEXT,,How many?, 3 ,\n"
        'd.png,json,ignored,Spec?,"{""b"": 1, ""a"": ""é""}",\n'
        "e.png,text,,Free?,,\n",
    )
    ds = load_manifest(manifest, prompt_template="Pick {labels}")
    assert [i.task for i in ds.items] == ["label", "text", "text", "json", "text"]
    assert [i.references for i in ds.items] == [(), ("red", "dark red"), ("3",), ('{"a": "é", "b": 1}',), ()]
    assert ds.tasks == ("json", "label", "text")
    assert ds.referenced == 3
    assert ds.items[3].label == "ignored"  # kept on the item ...
    assert ds.labels == ("scratch",)  # ... but only label rows make the label set
    assert ds.items[0].question == "Pick scratch"


def test_jsonl_references_of_every_shape(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"image": "a.png", "answers": ["cat", 7, 2.5]},
            {"image": "b.png", "answer": 42},
            {"image": "c.png", "answer": {"z": [1, 2], "a": None}, "task": "json"},
            {"image": "d.png", "answer": '{"k": "v"}', "task": "json"},
            {"image": "e.png", "answer": None},
            {"image": "f.png", "answer": "", "task": "json"},
        ],
    )
    ds = load_manifest(manifest, task="text", prompt_template="Describe.")
    assert [i.task for i in ds.items] == ["text", "text", "json", "json", "text", "json"]
    assert [i.references for i in ds.items] == [
        ("cat", "7", "2.5"),
        ("42",),
        ('{"a": null, "z": [1, 2]}',),
        ('{"k": "v"}',),
        (),
        (),
    ]
    assert ds.referenced == 4 and ds.labelled == 0


def test_dataset_task_is_the_default_and_rows_override_it(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,question,answer,task\na.png,Q?,yes,\nb.png,Q?,yes,label\n")
    ds = load_manifest(manifest, task="text")
    assert [(i.task, i.references) for i in ds.items] == [("text", ("yes",)), ("label", ())]
    assert load_manifest(manifest).tasks == ("label",)  # no task=: label rows, answers ignored
    assert load_manifest(manifest, task=" Text ").items[0].task == "text"


def test_label_rows_are_unchanged_by_answer_columns(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "label": "x", "answer": [1, {}], "answers": 3}])
    ds = load_manifest(manifest, task="label")  # asked for: without --task the answers are refused (a test below)
    assert (ds.items[0].task, ds.items[0].references, ds.items[0].label) == ("label", (), "x")
    assert ds.tasks == ("label",) and ds.referenced == 0


def test_labels_on_text_rows_are_not_checked_against_declared_labels(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label,task,question\na.png,yes,,\nb.png,whatever,text,Q?\n")
    ds = load_manifest(manifest, labels=["yes", "no"])
    assert [i.label for i in ds.items] == ["yes", "whatever"]


def test_text_rows_without_question_need_a_template(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,task,answer\na.png,text,red\n")
    raises(manifest, "no labels", "--prompt-template")
    assert load_manifest(manifest, prompt_template="Colour?").items[0].question == "Colour?"


def test_unknown_task_names_file_line_and_known_tasks(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label,task\na.png,x,\nb.png,x,caption\n")
    raises(manifest, ":3:", "'caption'", "'task'", "label, text, json")
    raises(write(tmp_path / "ok.csv", "image,label\na.png,x\n"), "ok.csv", "'vqa'", "label, text, json", task="vqa")


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ({"answer": [1, 2], "task": "json"}, ["'answer'", "exactly one reference"]),
        ({"answer": [[1]], "task": "json"}, ["'answer'", "JSON object", "array"]),
        ({"answer": 5, "task": "json"}, ["'answer'", "JSON object", "number"]),
        ({"answer": "[1, 2]", "task": "json"}, ["'answer'", "JSON object", "array"]),
        ({"answer": "{oops", "task": "json"}, ["'answer'", "not valid JSON"]),
        ({"answers": [{"a": 1}, {"b": 2}], "task": "json"}, ["'answers'", "exactly one reference"]),
        ({"answers": "red"}, ["'answers'", "list of strings"]),
        ({"answers": ["red", {"x": 1}]}, ["'answers' item 2", "string"]),
        ({"answers": ["red", "  "]}, ["'answers' item 2", "empty reference"]),
        ({"answer": {"x": 1}}, ["'answer'", "string"]),
        ({"answer": True}, ["'answer'", "string"]),
        ({"answer": "red", "answers": ["red"]}, ["both 'answer' and 'answers'"]),
        ({"task": ["text"]}, ["'task'", "must be a string"]),
    ],
)
def test_bad_references_in_jsonl(tmp_path, row, fragments):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "answer": "ok"}, {"image": "b.png", **row}])
    raises(manifest, ":2:", *fragments, task="text", prompt_template="Q?")


@pytest.mark.parametrize(
    ("cells", "fragments"),
    [
        (",red", ["'answers'", "JSON array"]),
        (',"{""a"": 1}"', ["'answers'", "list of strings"]),
        (',"[""red"", """"]"', ["'answers' item 2", "empty reference"]),
        ('"[1, 2]",', ["'answer'", "JSON object", "array"]),
    ],
)
def test_bad_references_in_csv(tmp_path, cells, fragments):
    task = "json" if "JSON object" in fragments else "text"
    manifest = write(tmp_path / "m.csv", f"image,answer,answers\nok.png,,\nb.png,{cells}\n")
    raises(manifest, ":3:", *fragments, task=task, prompt_template="Q?")


# -- the document-QA defects a new user met (issue 24) -----------------------------------------------------


def test_a_changed_image_changes_the_digest(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label\na.png,x\nb.png,y\n")
    missing = load_manifest(manifest).sha256
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "b.png").write_bytes(b"two")
    first = load_manifest(manifest).sha256
    assert first != missing and load_manifest(manifest).sha256 == first
    (tmp_path / "b.png").write_bytes(b"fixed")
    assert load_manifest(manifest).sha256 != first


def test_a_label_task_by_default_refuses_an_answers_column(tmp_path):
    manifest = write(tmp_path / "m.csv", 'image,question,answers\na.png,Q?,"[""red""]"\n')
    raises(manifest, "m.csv:2", "'answers'", "--task text", "--task label")
    assert load_manifest(manifest, task="text").items[0].references == ("red",)
    assert load_manifest(manifest, task="label", prompt_template="Q?").items[0].references == ()
    empty = write(tmp_path / "e.csv", "image,label,answer\na.png,x,\n")  # an empty column says nothing
    assert load_manifest(empty).items[0].label == "x"


def test_null_and_empty_answers_both_mean_no_reference(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "question": "Q?", "answers": None},
                                                   {"image": "b.png", "question": "Q?", "answers": []},
                                                   {"image": "c.png", "question": "Q?", "answers": ["x"]}])
    ds = load_manifest(manifest, task="text")
    assert [i.references for i in ds.items] == [(), (), ("x",)] and ds.referenced == 1


def test_no_labels_drops_the_references_of_open_ended_rows(tmp_path):
    manifest = write(tmp_path / "m.csv", 'image,question,answers,label\na.png,Q?,"[""red""]",x\n')
    ds = load_manifest(manifest, task="text", no_labels=True)
    assert ds.items[0].references == () and ds.referenced == 0 and ds.labelled == 0


def test_id_column_reads_the_ids_from_another_column(tmp_path):
    manifest = write(tmp_path / "m.csv", "image,label,questionId\na.png,x,57\nb.png,y,58\n")
    assert [i.id for i in load_manifest(manifest, id_column="questionId").items] == ["57", "58"]
    assert [i.id for i in load_manifest(manifest).items] == ["a.png", "b.png"]
    raises(manifest, "no column 'qid' (--id-column)", "questionid", id_column="qid")
