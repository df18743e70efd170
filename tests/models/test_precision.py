from medfake.models.precision import choose


def test_auto_follows_the_device():
    assert choose("auto", "auto", "Xception", "gpu") == ("float16", True)
    # bfloat16 training cost the quickstart's Xception 0.24 test AUC on the CPU: auto never picks it there.
    for name in ("Xception", "MobileNetV3Large", "ResNet50V2"):
        assert choose("auto", "auto", name, "cpu") == ("float32", False)


def test_explicit_choices_are_kept():
    assert choose("float32", "true", "Xception", "gpu") == ("float32", True)
    assert choose("bfloat16", "false", "MobileNetV3Large", "cpu") == ("bfloat16", False)
