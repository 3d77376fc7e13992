"""mindpet_lite.pet"""
