"""mindpet_lite.data"""
