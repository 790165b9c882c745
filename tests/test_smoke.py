from tests.conftest import tiny_config


def test_teacher_then_student(teacher_run, tmp_path):
    from kdcli.stages import train

    res = train.run(tiny_config(tmp_path / "s", teacher=str(teacher_run), kappa=0.1))
    assert res.run["subset"]["size"] == 60
    assert res.run["teacher"]["run_id"]
